//! Every route capture answers, in one table. The router is built from it and from
//! nothing else, so a route cannot be added without saying what it does with a body, and
//! what reads the table (the end-to-end hostile-input test, through [`routes`]) covers a
//! route added later without being edited.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::IntoResponse;
use axum::routing::{get, on, MethodFilter, MethodRouter};
use axum::Router;
use http::{Method, StatusCode};

use crate::request::Endpoint;
use crate::sdk_config::Ask;
use crate::server::{self, AppState};

/// What a route does with a request.
#[derive(Debug, Clone, Copy)]
enum Handler {
    /// Events through the pipeline. `get`: also GET with `data=` and HEAD, as the
    /// browser SDK's routes are.
    Events { endpoint: Endpoint, get: bool },
    /// `/i/v1/analytics/events`: translated, then through the pipeline.
    AnalyticsV1,
    /// The config by token in the path; no body.
    Config(Ask),
    /// `/flags` and `/decide`: the token from the query or the body.
    Flags { decide: bool },
    /// `/`: the service's name.
    Root,
    /// Served by `sluice_common::health::routes`.
    Probe,
}

impl Handler {
    fn methods(self) -> &'static [Method] {
        const EVENT_GET: &[Method] = &[Method::GET, Method::POST, Method::HEAD, Method::OPTIONS];
        const EVENT_POST: &[Method] = &[Method::POST, Method::OPTIONS];
        const FLAGS: &[Method] = &[Method::GET, Method::POST];
        const POST: &[Method] = &[Method::POST];
        const GET: &[Method] = &[Method::GET];
        match self {
            Handler::Events { get: true, .. } => EVENT_GET,
            Handler::Events { get: false, .. } => EVENT_POST,
            Handler::AnalyticsV1 => POST,
            Handler::Flags { .. } => FLAGS,
            Handler::Config(_) | Handler::Root | Handler::Probe => GET,
        }
    }
}

struct Route {
    path: String,
    handler: Handler,
}

/// Each path with and without its trailing slash, as SDKs send both.
fn both(path: &str, handler: Handler) -> [Route; 2] {
    [Route { path: path.to_string(), handler }, Route { path: format!("{path}/"), handler }]
}

fn table() -> Vec<Route> {
    let mut routes = Vec::new();
    for path in ["/e", "/capture", "/track"] {
        routes.extend(both(path, Handler::Events { endpoint: Endpoint::LegacyEvents, get: true }));
    }
    routes.extend(both("/i/v0/e", Handler::Events { endpoint: Endpoint::Events, get: true }));
    routes.extend(both("/engage", Handler::Events { endpoint: Endpoint::Engage, get: true }));
    routes.extend(both("/batch", Handler::Events { endpoint: Endpoint::Batch, get: false }));
    routes.extend(both("/s", Handler::Events { endpoint: Endpoint::Replay, get: false }));
    routes.push(Route { path: "/i/v1/analytics/events".into(), handler: Handler::AnalyticsV1 });
    routes.push(Route { path: "/array/{token}/config".into(), handler: Handler::Config(Ask::ConfigJson) });
    routes.push(Route { path: "/array/{token}/config.js".into(), handler: Handler::Config(Ask::ConfigScript) });
    routes.extend(both("/flags", Handler::Flags { decide: false }));
    routes.extend(both("/decide", Handler::Flags { decide: true }));
    routes.push(Route { path: "/".into(), handler: Handler::Root });
    routes.extend(sluice_common::health::PATHS.iter().map(|p| Route { path: p.to_string(), handler: Handler::Probe }));
    routes
}

/// One route as the outside sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// As the router matches it; `{token}` stands for a path segment.
    pub path: String,
    pub methods: Vec<String>,
    /// POST is among its methods: a body is read, decoded and parsed.
    pub reads_body: bool,
}

/// Every route capture serves, read from the table its router is built from.
pub fn routes() -> Vec<RouteInfo> {
    table()
        .into_iter()
        .map(|r| {
            let methods = r.handler.methods();
            RouteInfo {
                path: r.path,
                methods: methods.iter().map(|m| m.to_string()).collect(),
                reads_body: methods.contains(&Method::POST),
            }
        })
        .collect()
}

fn filter(methods: &[Method]) -> MethodFilter {
    methods
        .iter()
        .map(|m| MethodFilter::try_from(m.clone()).expect("a standard method"))
        .reduce(MethodFilter::or)
        .expect("every route has a method")
}

fn method_router(handler: Handler) -> Option<MethodRouter<Arc<AppState>>> {
    let methods = filter(handler.methods());
    Some(match handler {
        Handler::Events { endpoint, .. } => on(methods, move |State(state): State<Arc<AppState>>, req: Request| {
            let preflight_or_head = matches!(*req.method(), Method::OPTIONS | Method::HEAD);
            async move {
                if preflight_or_head {
                    return StatusCode::OK.into_response();
                }
                server::capture(state, endpoint, req).await
            }
        }),
        Handler::AnalyticsV1 => {
            on(methods, |State(state): State<Arc<AppState>>, req: Request| server::analytics_v1(state, req))
        }
        Handler::Config(ask) => {
            on(methods, move |State(state): State<Arc<AppState>>, Path(token): Path<String>| async move {
                server::sdk_answer(&state, ask, Some(&token)).await
            })
        }
        Handler::Flags { decide } => {
            on(methods, move |State(state): State<Arc<AppState>>, req: Request| server::flags(state, decide, req))
        }
        Handler::Root => get(|| async { "sluice-capture" }),
        Handler::Probe => return None,
    })
}

/// The router: every route of the table, the probes and metrics beside them, and CORS.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let routes = table()
        .into_iter()
        .filter_map(|r| Some((r.path, method_router(r.handler)?)))
        .fold(Router::new(), |router, (path, methods)| router.route(&path, methods));
    server::with_common_layers(routes, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_routed_once_and_every_body_route_takes_post() {
        let all = routes();
        let mut paths: Vec<&str> = all.iter().map(|r| r.path.as_str()).collect();
        paths.sort_unstable();
        let before = paths.len();
        paths.dedup();
        assert_eq!(before, paths.len(), "a path is in the table twice");
        for probe in sluice_common::health::PATHS {
            assert!(all.iter().any(|r| r.path == probe && !r.reads_body), "{probe}");
        }
        let flags = all.iter().find(|r| r.path == "/flags/").expect("/flags/");
        assert!(flags.reads_body && flags.methods.contains(&"GET".to_string()));
    }
}
