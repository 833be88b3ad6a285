//! What capture reads from a request before its body: the route, the lenient query,
//! the compression hints, the client ip and the receive time.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use time::OffsetDateTime;

/// The kind of endpoint a request came in on; it decides body limits and parsing rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/i/v0/e`: posthog-js's modern endpoint.
    Events,
    /// `/e`, `/capture`, `/track`: also accept bare base64 payloads, as old SDKs send them.
    LegacyEvents,
    /// `/batch`: `{api_key, batch}` bodies from server and mobile SDKs.
    Batch,
    /// `/engage`: legacy person updates, events without a name become `$identify`.
    Engage,
    /// `/s`: session replay.
    Replay,
    /// `/i/v1/analytics/events`: the v1 batch (Bearer token, per-event results).
    AnalyticsV1,
    /// `/flags` and `/decide`: a body holding a token, read as old SDKs send events.
    SdkConfig,
}

impl Endpoint {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Endpoint::Events => "events",
            Endpoint::LegacyEvents => "legacy_events",
            Endpoint::Batch => "batch",
            Endpoint::Engage => "engage",
            Endpoint::Replay => "replay",
            Endpoint::AnalyticsV1 => "analytics_v1",
            Endpoint::SdkConfig => "sdk_config",
        }
    }

    /// Legacy routes sniff base64 without a hint.
    pub(crate) fn sniffs_base64(self) -> bool {
        matches!(self, Endpoint::LegacyEvents | Endpoint::Engage | Endpoint::SdkConfig)
    }
}

/// The query parameters capture understands. Parsing never fails: anything unreadable is
/// ignored, because rejecting an SDK's request over a stray parameter loses its events.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Query {
    pub data: Option<String>,
    pub compression: Option<String>,
    pub beacon: bool,
    /// `_`: the client's send time in epoch milliseconds.
    pub sent_at_ms: Option<i64>,
}

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Query {
        let mut q = Query::default();
        let Some(raw) = raw else { return q };
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            match &*k {
                "data" if !v.is_empty() => q.data = Some(v.into_owned()),
                "compression" if !v.is_empty() => q.compression = Some(v.into_owned()),
                "beacon" => q.beacon = v == "1" || v.eq_ignore_ascii_case("true"),
                "_" => q.sent_at_ms = v.trim().parse::<f64>().ok().filter(|f| f.is_finite()).map(|f| f as i64),
                _ => {}
            }
        }
        q
    }
}

/// Everything about a request that the pipeline needs besides its body.
#[derive(Debug, Clone)]
pub(crate) struct RequestMeta {
    pub route: Endpoint,
    pub query: Query,
    pub is_form: bool,
    pub content_encoding: Option<String>,
    pub ip: IpAddr,
    pub now: OffsetDateTime,
}

impl RequestMeta {
    pub(crate) fn new(
        route: Endpoint,
        raw_query: Option<&str>,
        headers: &HeaderMap,
        peer: SocketAddr,
        trusted_hops: usize,
    ) -> Self {
        RequestMeta {
            route,
            query: Query::parse(raw_query),
            is_form: is_form(headers),
            content_encoding: headers
                .get(http::header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_ascii_lowercase()),
            ip: client_ip(headers, peer.ip(), trusted_hops),
            now: OffsetDateTime::now_utc(),
        }
    }
}

/// Compares the media type's essence only: `application/x-www-form-urlencoded; charset=UTF-8`
/// is a form too.
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

/// The client's address: `X-Forwarded-For` (leftmost, or `trusted_hops` from the right
/// when capture sits behind that many proxies of its own), then `Forwarded`, then
/// `X-Real-IP`, then the peer.
pub(crate) fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted_hops: usize) -> IpAddr {
    let header =
        |name: &str| headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");

    let xff = header("x-forwarded-for");
    let hops: Vec<IpAddr> = xff.split(',').filter_map(parse_ip).collect();
    let from_xff =
        if trusted_hops == 0 { hops.first() } else { hops.len().checked_sub(trusted_hops).and_then(|i| hops.get(i)) };
    if let Some(ip) = from_xff {
        return *ip;
    }
    let forwarded = header("forwarded");
    let from_forwarded = forwarded
        .split([',', ';'])
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
        .find_map(|(_, v)| parse_ip(v));
    if let Some(ip) = from_forwarded {
        return ip;
    }
    if let Some(ip) = parse_ip(&header("x-real-ip")) {
        return ip;
    }
    peer
}

/// Reads `1.2.3.4`, `1.2.3.4:80`, `"[::1]:80"`, `::1`.
fn parse_ip(raw: &str) -> Option<IpAddr> {
    let s = raw.trim().trim_matches('"');
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sock) = s.parse::<SocketAddr>() {
        return Some(sock.ip());
    }
    s.strip_prefix('[').and_then(|r| r.split(']').next()).and_then(|r| r.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }
    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9));

    #[test]
    fn query_is_lenient() {
        let q = Query::parse(Some("ip=1&_=1700000000123&ver=1.2&compression=gzip-js&beacon=1&%zz=%%&data="));
        assert_eq!(q.compression.as_deref(), Some("gzip-js"));
        assert_eq!(q.sent_at_ms, Some(1_700_000_000_123));
        assert!(q.beacon);
        assert_eq!(q.data, None, "empty data means: read the body");
        let q = Query::parse(Some("_=notanumber&&&==&data=eyJ9"));
        assert_eq!(q.sent_at_ms, None);
        assert_eq!(q.data.as_deref(), Some("eyJ9"));
    }

    #[test]
    fn form_detection_compares_the_essence() {
        assert!(is_form(&headers(&[("content-type", "application/x-www-form-urlencoded; charset=UTF-8")])));
        assert!(is_form(&headers(&[("content-type", "Application/X-WWW-Form-Urlencoded")])));
        assert!(!is_form(&headers(&[("content-type", "text/plain")])));
        assert!(!is_form(&HeaderMap::new()));
    }

    #[test]
    fn ip_sources_in_order() {
        let h = headers(&[("x-forwarded-for", "203.0.113.7, 10.1.1.1"), ("x-real-ip", "198.51.100.1")]);
        assert_eq!(client_ip(&h, PEER, 0).to_string(), "203.0.113.7");
        assert_eq!(client_ip(&h, PEER, 1).to_string(), "10.1.1.1");
        assert_eq!(client_ip(&h, PEER, 2).to_string(), "203.0.113.7");
        assert_eq!(client_ip(&h, PEER, 3).to_string(), "198.51.100.1", "more hops than addresses falls through");
        let h = headers(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https")]);
        assert_eq!(client_ip(&h, PEER, 0).to_string(), "2001:db8::1");
        let h = headers(&[("x-forwarded-for", "garbage"), ("x-real-ip", "198.51.100.1")]);
        assert_eq!(client_ip(&h, PEER, 0).to_string(), "198.51.100.1");
        assert_eq!(client_ip(&HeaderMap::new(), PEER, 0), PEER);
    }
}
