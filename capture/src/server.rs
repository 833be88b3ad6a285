//! The HTTP layer: routes, body reading with limits, responses, and the accept loop
//! with its graceful drain.
//!
//! What a client can hold, and for how long, is bounded at each step: a connection slot
//! (`MAX_CONNECTIONS`, closed after `IDLE_TIMEOUT_MS` without a request), the time to
//! send headers and the whole body, the memory its body takes (the shared budget), and
//! a processing slot (`MAX_CONCURRENT_REQUESTS`), taken only once the body is in, so a
//! client that trickles its body holds a connection, never a slot others need.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;
use http::{header, Method, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tracing::{info, warn};

use crate::budget::{MemoryBudget, Reservation};
use crate::error::CaptureError;
use crate::health::Health;
use crate::pipeline::{Accepted, Pipeline};
use crate::request::{Endpoint, RequestMeta};
use crate::sdk_config::{Answer, Ask, SdkConfigs};
use crate::{decode, sdk_request, telemetry, v1};

/// Body limits as received (before decompression), per kind of route.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    pub events: usize,
    pub batch: usize,
    pub replay: usize,
    /// `/flags` and `/decide`, as received and decoded: they carry a token and a few
    /// properties, never events.
    pub sdk_config: usize,
}

impl BodyLimits {
    fn for_route(&self, route: Endpoint) -> usize {
        match route {
            Endpoint::Batch | Endpoint::AnalyticsV1 => self.batch,
            Endpoint::Replay => self.replay,
            Endpoint::Events | Endpoint::LegacyEvents | Endpoint::Engage => self.events,
            Endpoint::SdkConfig => self.sdk_config,
        }
    }
}

pub(crate) struct AppState {
    pub pipeline: Pipeline,
    /// What `/array/<token>/config`, `/flags` and `/decide` answer.
    pub sdk_config: SdkConfigs,
    pub health: Health,
    pub metrics: PrometheusHandle,
    pub body_limits: BodyLimits,
    pub body_timeouts: BodyTimeouts,
    pub trusted_proxy_hops: usize,
    pub memory: MemoryBudget,
    /// Requests being decoded, parsed and produced.
    pub slots: Semaphore,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyTimeouts {
    /// Longest wait for the next chunk.
    pub chunk: Duration,
    /// Longest time for the whole body, however it is trickled.
    pub whole: Duration,
}

/// What every route gets: the probes and metrics beside it, CORS, and the state.
pub(crate) fn with_common_layers(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    routes
        .merge(sluice_common::health::routes(Arc::new(state.health.clone()), state.metrics.clone()))
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

/// `/flags` and `/decide`: the token comes from the query, or else from the body, which
/// is received and decoded under the same limits, memory reservation and processing
/// slot as an event body, and from which only the token is read.
pub(crate) async fn flags(state: Arc<AppState>, decide: bool, req: Request) -> Response {
    let started = Instant::now();
    let route = Endpoint::SdkConfig;
    let (parts, body) = req.into_parts();
    let query: Vec<(String, String)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let ask = if decide {
        Ask::Decide { version: param("v").and_then(|v| v.parse().ok()).unwrap_or(1) }
    } else {
        Ask::Flags { with_config: param("config").is_some_and(|v| v == "true" || v == "1") }
    };
    let token = match param("token").or_else(|| param("api_key")) {
        Some(token) => Ok(Some(token.to_string())),
        None => {
            // Old SDKs send `/decide` bodies as they send events (a base64 form, gzip).
            let meta = RequestMeta::new(route, parts.uri.query(), &parts.headers, peer(&parts), 0);
            async {
                let (body, mut memory, _slot) = receive(&state, route, &parts, body).await?;
                if body.is_empty() && meta.query.data.is_none() {
                    return Ok(None);
                }
                let limit = state.body_limits.sdk_config;
                let decoded = decode::decode(&meta, body, limit, &mut memory)?;
                Ok(sdk_request::token(&decoded.json)?)
            }
            .await
        }
    };
    let response = match token {
        Ok(token) => Ok(sdk_answer(&state, ask, token.as_deref()).await),
        Err(e) => Err(e),
    };
    answered(route, started, response)
}

pub(crate) async fn sdk_answer(state: &AppState, ask: Ask, token: Option<&str>) -> Response {
    let limited = token.is_some_and(|t| state.pipeline.router.lists.quota_recordings.contains(t));
    let Answer { status, content_type, body, outcome } = state.sdk_config.answer(ask, token, limited).await;
    telemetry::sdk_config_request(ask.label(), outcome);
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

pub(crate) async fn capture(state: Arc<AppState>, route: Endpoint, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let meta = RequestMeta::new(route, parts.uri.query(), &parts.headers, peer(&parts), state.trusted_proxy_hops);
    let result = async {
        let (body, memory, _slot) = receive(&state, route, &parts, body).await?;
        state.pipeline.handle(&meta, body, memory).await
    }
    .await;
    answered(route, started, result.map(|outcome| success(&meta, outcome)))
}

/// The client's address as the connection gives it.
fn peer(parts: &http::request::Parts) -> SocketAddr {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0)
}

/// What every event route does before its own work: refuse a declared size over the
/// route's limit, read the body under its limits and the memory budget, and take a
/// processing slot.
async fn receive<'s>(
    state: &'s AppState,
    route: Endpoint,
    parts: &http::request::Parts,
    body: Body,
) -> Result<(Bytes, Reservation, tokio::sync::SemaphorePermit<'s>), CaptureError> {
    let limit = state.body_limits.for_route(route);
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(CaptureError::BodyTooLarge { limit });
    }
    let mut memory = state.memory.reservation();
    let body = read_body(body, limit, state.body_timeouts, &mut memory).await?;
    // Past the limit, requests are answered 503 at once rather than queued: a queue
    // here only adds memory and latency, and every SDK retries 503.
    let slot = state.slots.try_acquire().map_err(|_| CaptureError::Overloaded)?;
    Ok((body, memory, slot))
}

/// The answer of an event route, its server errors logged and every answer counted.
fn answered(route: Endpoint, started: Instant, result: Result<Response, CaptureError>) -> Response {
    let response = result.unwrap_or_else(|e| {
        if e.status().is_server_error() {
            warn!(route = route.as_str(), error = %e, "request not accepted");
        }
        e.into_response()
    });
    telemetry::request_done(route.as_str(), response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// The v1 batch: decoded like any body, translated to the `/batch` shape, then through the
/// pipeline; answered per event.
pub(crate) async fn analytics_v1(state: Arc<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let route = Endpoint::AnalyticsV1;
    let (parts, body) = req.into_parts();
    let mut meta = RequestMeta::new(route, parts.uri.query(), &parts.headers, peer(&parts), state.trusted_proxy_hops);
    let result = async {
        let (body, mut memory, _slot) = receive(&state, route, &parts, body).await?;
        let decoded = decode::decode(&meta, body, state.pipeline.max_decompressed_bytes, &mut memory)?;
        let translated = v1::translate(&decoded.json, &parts.headers, &mut memory)?;
        if !translated.accepted.is_empty() {
            // What goes on is plain JSON now.
            meta.content_encoding = None;
            meta.query = Default::default();
            state.pipeline.handle(&meta, Bytes::from(translated.batch.to_string()), memory).await?;
        }
        Ok(translated)
    }
    .await;
    answered(route, started, result.map(|t| (StatusCode::OK, Json(v1::results(&t))).into_response()))
}

fn success(meta: &RequestMeta, outcome: Accepted) -> Response {
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

/// Reads the body as it arrives, stopping at `limit`, reserving each chunk's memory, and
/// giving up on a client that pauses longer than `timeouts.chunk` or takes longer than
/// `timeouts.whole` in all.
async fn read_body(
    body: Body,
    limit: usize,
    timeouts: BodyTimeouts,
    memory: &mut Reservation,
) -> Result<Bytes, CaptureError> {
    match tokio::time::timeout(timeouts.whole, read_chunks(body, limit, timeouts.chunk, memory)).await {
        Ok(read) => read,
        Err(_) => Err(CaptureError::BodyTimeout),
    }
}

async fn read_chunks(
    mut body: Body,
    limit: usize,
    chunk_timeout: Duration,
    memory: &mut Reservation,
) -> Result<Bytes, CaptureError> {
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
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
            None if rest.is_empty() => {
                memory.hold(data.len())?;
                first = Some(data)
            }
            _ => {
                // Later frames are gathered in a buffer that grows only into reserved memory.
                let pending = first.as_ref().map_or(0, Bytes::len);
                memory.make_room(&mut rest, pending + data.len())?;
                if let Some(f) = first.take() {
                    rest.extend_from_slice(&f);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(rest)))
}

/// What a connection may hold and for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1 keep-alive
    /// and HTTP/2 alike).
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Bytes HTTP/1 buffers for a request's head; HTTP/2 flow-control windows.
    pub max_buffer_bytes: usize,
}

/// When a connection last finished a request, and how many it has in flight.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self, epoch: Instant) {
        self.last_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self, epoch: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(epoch.elapsed().saturating_sub(last))
    }
}

/// Counts a request as in flight until its response is produced (or it is dropped).
struct InFlight(Arc<Activity>, Instant);

impl InFlight {
    fn start(activity: &Arc<Activity>, epoch: Instant) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone(), epoch)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch(self.1);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until `shutdown` resolves, then stops accepting and gives the
/// open connections `drain_timeout` to finish their requests.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    drain_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_buffer_bytes.max(8192));
    let window = u32::try_from(limits.max_buffer_bytes).unwrap_or(u32::MAX).max(65_535);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .max_concurrent_streams(100)
        // Pings find peers that vanished; the idle timeout closes the ones that stay.
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing) = watch::channel(false);
    let epoch = Instant::now();
    tokio::pin!(shutdown);
    loop {
        // At the connection limit, new connections wait in the kernel's backlog.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
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
        let activity = Arc::new(Activity::default());
        activity.touch(epoch);
        let svc = {
            let activity = activity.clone();
            tower::ServiceExt::map_request(app.clone(), move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(Arc::new(InFlight::start(&activity, epoch)));
                req
            })
        };
        let builder = builder.clone();
        let mut closing = closing.clone();
        let idle_timeout = limits.idle_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc)).into_owned();
            tokio::pin!(conn);
            let mut check = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(10)));
            let mut closing_since: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = closing.changed(), if closing_since.is_none() => {
                        conn.as_mut().graceful_shutdown();
                        closing_since = Some(Instant::now());
                    }
                    _ = check.tick() => {
                        let idle = activity.idle_for(epoch);
                        match closing_since {
                            None if idle.is_some_and(|idle| idle >= idle_timeout) => {
                                conn.as_mut().graceful_shutdown();
                                closing_since = Some(Instant::now());
                            }
                            // HTTP/2's graceful close waits for the client to answer a
                            // ping; one that never does is cut off once it has had an
                            // idle timeout's worth of time, if it started nothing since.
                            Some(since) if since.elapsed() >= idle_timeout && idle.is_some() => break,
                            _ => {}
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    info!("stopped accepting connections; draining");
    let _ = closing_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain_timeout, connections.acquire_many(all)).await.is_err() {
        warn!("drain timeout reached with connections still open");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body in many frames reserves about what its buffer takes (it grows by doubling),
    /// not a fresh copy of the buffer for every frame.
    #[tokio::test]
    async fn a_body_in_many_frames_reserves_what_its_buffer_takes() {
        let frames: Vec<Result<Bytes, std::io::Error>> =
            (0..160).map(|_| Ok(Bytes::from(vec![b'x'; 64 * 1024]))).collect();
        let body = Body::from_stream(futures::stream::iter(frames));
        let budget = MemoryBudget::new(1 << 30, 64 << 20);
        let mut memory = budget.reservation();
        let read = read_chunks(body, 20 << 20, Duration::from_secs(5), &mut memory).await.unwrap();
        assert_eq!(read.len(), 10 << 20);
        assert!(memory.held() <= 2 * (10 << 20) + (64 << 10), "{} held for 10 MiB", memory.held());
    }
}
