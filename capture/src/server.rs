//! The HTTP layer: routes, body reading with limits, responses, and the accept loop
//! with its graceful drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{BoxError, Json, Router};
use bytes::{Bytes, BytesMut};
use http::{header, Method, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tracing::{info, warn};

use crate::error::CaptureError;
use crate::health::Health;
use crate::pipeline::{Outcome, Pipeline};
use crate::request::{RequestMeta, Route};
use crate::telemetry;

/// Body limits as received (before decompression), per kind of route.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub events: usize,
    pub batch: usize,
    pub replay: usize,
}

impl BodyLimits {
    fn for_route(&self, route: Route) -> usize {
        match route {
            Route::Batch => self.batch,
            Route::Replay => self.replay,
            Route::Events | Route::LegacyEvents | Route::Engage => self.events,
        }
    }
}

pub struct AppState {
    pub pipeline: Pipeline,
    pub health: Health,
    pub metrics: PrometheusHandle,
    pub body_limits: BodyLimits,
    pub body_chunk_timeout: Duration,
    pub trusted_proxy_hops: usize,
}

pub fn router(state: Arc<AppState>, max_concurrent_requests: usize) -> Router {
    let capture_routes = Router::new()
        .merge(event_routes(&["/e", "/i/v0/e", "/capture", "/track"], |path| {
            if path == "/i/v0/e" {
                Route::Events
            } else {
                Route::LegacyEvents
            }
        }))
        .merge(event_routes(&["/engage"], |_| Route::Engage))
        .merge(post_routes(&["/batch"], Route::Batch))
        .merge(post_routes(&["/s"], Route::Replay))
        // Past the limit, requests are answered 503 at once rather than queued: a queue
        // here only adds memory and latency, and every SDK retries 503.
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async { CaptureError::Overloaded.into_response() }))
                .load_shed()
                .concurrency_limit(max_concurrent_requests),
        );

    Router::new()
        .merge(capture_routes)
        .route("/", get(|| async { "sluice-capture" }))
        .route("/_liveness", get(liveness))
        .route("/_readiness", get(readiness))
        .route("/metrics", get(metrics))
        .layer(
            // posthog-js sends credentials, so the origin must be echoed, never `*`.
            CorsLayer::new()
                .allow_origin(AllowOrigin::mirror_request())
                .allow_headers(AllowHeaders::mirror_request())
                .allow_credentials(true)
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                .max_age(Duration::from_secs(3600)),
        )
        .with_state(state)
}

fn with_trailing_slash(paths: &[&'static str]) -> Vec<(String, &'static str)> {
    paths.iter().flat_map(|p| [(p.to_string(), *p), (format!("{p}/"), *p)]).collect()
}

fn capture_handler(route: Route) -> MethodRouter<Arc<AppState>> {
    axum::routing::post(move |State(state): State<Arc<AppState>>, req: Request| capture(state, route, req))
        .options(|| async { StatusCode::OK })
}

fn event_routes(paths: &[&'static str], route_of: fn(&str) -> Route) -> Router<Arc<AppState>> {
    with_trailing_slash(paths).into_iter().fold(Router::new(), |r, (path, base)| {
        let route = route_of(base);
        r.route(
            &path,
            capture_handler(route)
                .get(move |State(state): State<Arc<AppState>>, req: Request| capture(state, route, req))
                .head(|| async { StatusCode::OK }),
        )
    })
}

fn post_routes(paths: &[&'static str], route: Route) -> Router<Arc<AppState>> {
    with_trailing_slash(paths).into_iter().fold(Router::new(), |r, (path, _)| r.route(&path, capture_handler(route)))
}

async fn capture(state: Arc<AppState>, route: Route, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    let meta = RequestMeta::new(route, parts.uri.query(), &parts.headers, peer, state.trusted_proxy_hops);
    let limit = state.body_limits.for_route(route);

    let result = async {
        let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(CaptureError::BodyTooLarge { limit });
        }
        let body = read_body(body, limit, state.body_chunk_timeout).await?;
        state.pipeline.handle(&meta, body).await
    }
    .await;

    let response = match result {
        Ok(outcome) => success(&meta, outcome),
        Err(e) => {
            if e.status().is_server_error() {
                warn!(route = route.as_str(), error = %e, "request not accepted");
            }
            e.into_response()
        }
    };
    telemetry::request_done(route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

fn success(meta: &RequestMeta, outcome: Outcome) -> Response {
    if meta.query.beacon {
        return StatusCode::NO_CONTENT.into_response();
    }
    let body = if outcome.recordings_quota_limited {
        json!({"status": "Ok", "quota_limited": ["recordings"]})
    } else {
        json!({"status": "Ok"})
    };
    (StatusCode::OK, Json(body)).into_response()
}

/// Reads the body as it arrives, stopping at `limit`, and giving up on a client that
/// leaves more than `chunk_timeout` between two chunks.
async fn read_body(mut body: Body, limit: usize, chunk_timeout: Duration) -> Result<Bytes, CaptureError> {
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(chunk_timeout, body.frame()).await {
            Err(_) => return Err(CaptureError::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(CaptureError::BodyRead(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if so_far + data.len() > limit {
            return Err(CaptureError::BodyTooLarge { limit });
        }
        // Most bodies arrive in one frame: keep it without copying.
        match &first {
            None if rest.is_empty() => first = Some(data),
            _ => {
                if let Some(f) = first.take() {
                    rest.extend_from_slice(&f);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}

async fn liveness(State(state): State<Arc<AppState>>) -> Response {
    match state.health.liveness() {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn readiness(State(state): State<Arc<AppState>>) -> Response {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

/// Accepts connections until `shutdown` resolves, then stops accepting and gives the
/// open connections `drain_timeout` to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    drain_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = tower::ServiceExt::map_request(app.clone(), move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    info!("stopped accepting connections; draining");
    if tokio::time::timeout(drain_timeout, graceful.shutdown()).await.is_err() {
        warn!("drain timeout reached with connections still open");
    }
}
