//! `ctx.http.fetch`: only to hosts the plugin's manifest allows, never (unless the
//! operator says so) to loopback, private or link-local addresses — checked on the
//! addresses the name resolves to, and the connection pinned to those addresses so a
//! second resolution cannot swap them. Redirects are followed by hand, each hop checked
//! the same way. Time and response size are capped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use mlua::{Lua, Table};

use crate::limits::HttpLimits;
use crate::manifest::HttpManifest;

const MAX_REDIRECTS: usize = 5;

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum HttpError {
    #[error("not a valid http(s) url: {0}")]
    BadUrl(String),
    #[error("host {0} is not in the plugin's http allow-list")]
    HostNotAllowed(String),
    #[error("{host} resolves to {addr}, a loopback, private or link-local address")]
    PrivateAddress { host: String, addr: IpAddr },
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("request failed: {0}")]
    Failed(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Policy {
    allow: Vec<String>,
    limits: HttpLimits,
}

#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub url: String,
    pub method: reqwest::Method,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub(crate) fn from_lua(_lua: &Lua, url: &str, options: Option<Table>) -> mlua::Result<Request> {
        let mut r = Request {
            url: url.to_string(),
            method: reqwest::Method::GET,
            headers: Vec::new(),
            body: None,
            timeout_ms: None,
        };
        if let Some(o) = options {
            if let Some(m) = o.get::<Option<String>>("method")? {
                r.method = reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).map_err(mlua::Error::external)?;
            }
            if let Some(h) = o.get::<Option<Table>>("headers")? {
                for (k, v) in h.pairs::<String, String>().flatten() {
                    r.headers.push((k, v));
                }
            }
            r.body = o.get::<Option<mlua::String>>("body")?.map(|b| b.as_bytes().to_vec());
            r.timeout_ms = o.get::<Option<u64>>("timeout_ms")?;
        }
        Ok(r)
    }
}

impl Response {
    pub(crate) fn into_lua(self, lua: &Lua) -> mlua::Result<Table> {
        let t = lua.create_table()?;
        t.raw_set("status", self.status)?;
        let headers = lua.create_table()?;
        for (k, v) in self.headers {
            headers.raw_set(k, v)?;
        }
        t.raw_set("headers", headers)?;
        t.raw_set("body", lua.create_string(&self.body)?)?;
        Ok(t)
    }
}

impl Policy {
    /// `allow` entries are host names, `*.suffix`, or `$config:KEY`: the host of the URL
    /// the team configured in KEY (a webhook's target is the operator's choice, not the
    /// author's).
    pub(crate) fn new(
        manifest: &HttpManifest,
        limits: &HttpLimits,
        config: &serde_json::Map<String, serde_json::Value>,
    ) -> Policy {
        let allow = manifest
            .allow
            .iter()
            .filter_map(|entry| match entry.strip_prefix("$config:") {
                Some(key) => config
                    .get(key)
                    .and_then(|v| v.as_str())
                    .and_then(|u| reqwest::Url::parse(u).ok())
                    .and_then(|u| u.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())),
                None => Some(entry.clone()),
            })
            .map(|h| h.to_ascii_lowercase())
            .collect();
        Policy { allow, limits: limits.clone() }
    }

    pub(crate) fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow.iter().any(|a| match a.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => *a == host,
        })
    }

    pub(crate) async fn fetch(&self, mut request: Request) -> Result<Response, HttpError> {
        let timeout = request
            .timeout_ms
            .map(std::time::Duration::from_millis)
            .unwrap_or(self.limits.timeout)
            .min(self.limits.timeout);
        for _ in 0..=MAX_REDIRECTS {
            let url = reqwest::Url::parse(&request.url).map_err(|_| HttpError::BadUrl(request.url.clone()))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(HttpError::BadUrl(request.url.clone()));
            }
            let host = url.host_str().ok_or_else(|| HttpError::BadUrl(request.url.clone()))?.to_string();
            let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
            if !self.host_allowed(&bare) {
                return Err(HttpError::HostNotAllowed(bare));
            }
            let port = url.port_or_known_default().unwrap_or(80);
            let addrs = self.resolve(&bare, port).await?;
            // No proxy, whatever the environment says: a proxy resolves names itself and
            // would reach what the pinned, checked addresses keep out.
            let client = reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(timeout)
                .resolve_to_addrs(&bare, &addrs)
                .build()
                .map_err(|e| HttpError::Failed(e.to_string()))?;
            let mut builder = client.request(request.method.clone(), url.clone());
            for (k, v) in &request.headers {
                builder = builder.header(k, v);
            }
            if let Some(body) = &request.body {
                builder = builder.body(body.clone());
            }
            let mut response = builder.send().await.map_err(|e| HttpError::Failed(e.to_string()))?;
            let status = response.status();
            if status.is_redirection() {
                if let Some(location) = response.headers().get(reqwest::header::LOCATION) {
                    let next = url
                        .join(location.to_str().unwrap_or_default())
                        .map_err(|_| HttpError::BadUrl(format!("{location:?}")))?;
                    request.url = next.to_string();
                    if status == reqwest::StatusCode::SEE_OTHER {
                        request.method = reqwest::Method::GET;
                        request.body = None;
                    }
                    continue;
                }
            }
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
                .collect();
            let max = self.limits.max_response_bytes;
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| HttpError::Failed(e.to_string()))? {
                if body.len() + chunk.len() > max {
                    return Err(HttpError::TooLarge(max));
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(Response { status: status.as_u16(), headers, body });
        }
        Err(HttpError::TooManyRedirects)
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, HttpError> {
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                tokio::net::lookup_host((host, port)).await.map_err(|_| HttpError::Resolve(host.to_string()))?.collect()
            }
        };
        if addrs.is_empty() {
            return Err(HttpError::Resolve(host.to_string()));
        }
        if !self.limits.allow_private_addresses {
            if let Some(a) = addrs.iter().find(|a| !is_public(a.ip())) {
                return Err(HttpError::PrivateAddress { host: host.to_string(), addr: a.ip() });
            }
        }
        Ok(addrs)
    }
}

/// Addresses on the public internet: not loopback, private (10/8, 172.16/12,
/// 192.168/16, fc00::/7), link-local (169.254/16 — cloud metadata —, fe80::/10),
/// carrier-grade NAT (100.64/10), unspecified, broadcast, multicast or documentation.
///
/// IPv6 is public only inside global unicast (2000::/3), and every form that carries an
/// IPv4 address (mapped, compatible, NAT64, 6to4, ISATAP) is judged by that address, so
/// `64:ff9b::a9fe:a9fe` is the metadata service it reaches. Teredo and local-use NAT64
/// relay to addresses that cannot be checked here, so they are not public.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(v6) {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let global_unicast = (s[0] & 0xe000) == 0x2000;
            let teredo = s[0] == 0x2001 && s[1] == 0;
            let documentation = s[0] == 0x2001 && s[1] == 0x0db8;
            let local_nat64 = s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 1;
            global_unicast && !teredo && !documentation && !local_nat64
        }
    }
}

/// The IPv4 address an IPv6 address carries, in any of the forms that route to it.
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let tail = || std::net::Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    // IPv4-compatible `::a.b.c.d` (but not `::` and `::1`, which are IPv6's own).
    if s[..6].iter().all(|&x| x == 0) && (s[6] != 0 || s[7] > 1) {
        return Some(tail());
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0) {
        return Some(tail());
    }
    // 6to4 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        return Some(std::net::Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    // ISATAP interface identifier `::0:5efe:a.b.c.d` / `::200:5efe:a.b.c.d`, any prefix.
    if (s[4] == 0 || s[4] == 0x0200) && s[5] == 0x5efe {
        return Some(tail());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_and_the_metadata_service_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            // Every IPv6 form that carries an IPv4 address, carrying a private one.
            "::127.0.0.1",
            "::169.254.169.254",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::10.0.0.1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:0101::",
            "2001:db8::200:5efe:10.0.0.1",
            "fe80::5efe:169.254.169.254",
            // Relays to addresses that cannot be checked, and what is not global unicast.
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "64:ff9b:1::8.8.8.8",
            "2001:db8::1",
            "fec0::1",
            "100::1",
            "240.0.0.1",
            "198.18.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "172.32.0.1",
            "8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
            "::8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn allow_list_by_host_or_subdomain() {
        let manifest = HttpManifest {
            allow: vec!["api.example.com".into(), "*.hooks.io".into(), "$config:url".into(), "$config:none".into()],
            in_process_event: false,
        };
        let config = serde_json::json!({"url": "https://receiver.example.org:8443/in"});
        let p = Policy::new(&manifest, &crate::limits::Limits::default().http, config.as_object().unwrap());
        assert!(p.host_allowed("receiver.example.org"), "the configured url's host");
        assert!(p.host_allowed("api.example.com"));
        assert!(p.host_allowed("API.Example.com."));
        assert!(p.host_allowed("a.hooks.io"));
        assert!(!p.host_allowed("hooks.io"));
        assert!(!p.host_allowed("evil-hooks.io"));
        assert!(!p.host_allowed("example.com"));
    }
}
