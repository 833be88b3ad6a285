//! What the supervisor and a worker process say to each other over the worker's
//! stdin/stdout: length-prefixed JSON frames. One `Process` request carries a whole
//! batch for a team's chain, so the boundary costs one round trip per batch and chain.
//!
//! Events cross as JSON text inside the frame, never as nested values: an event is then
//! read on each side with the same nesting limit it was read with before, whatever the
//! frame adds around it. Answers have a size bound both sides compute from the request
//! ([`answer_bound`]): the worker holds each plugin's output to its share of it, and the
//! supervisor refuses a larger frame before allocating it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::hook::{Hook, PluginConfigId, PluginError};
use crate::host::LogEntry;
use crate::limits::Limits;
use crate::manifest::PluginSource;

/// A request frame larger than this is a broken peer, not a batch.
pub(crate) const MAX_FRAME_BYTES: usize = 512 << 20;

/// What an answer may hold besides its events: logs (capped per line and per minute)
/// and error texts (capped each).
const ANSWER_OVERHEAD_BYTES: usize = 16 << 20;

/// How large one event may grow in a plugin chain: enrichment, not expansion.
pub(crate) fn event_allowance(input_bytes: usize, event_bytes: usize) -> usize {
    (64 * 1024 + input_bytes.saturating_mul(2)).min(event_bytes.max(input_bytes))
}

/// The largest answer to a request carrying `events`.
pub(crate) fn answer_bound(events: &[String], event_bytes: usize) -> usize {
    events.iter().map(|e| event_allowance(e.len(), event_bytes)).fold(ANSWER_OVERHEAD_BYTES, usize::saturating_add)
}

/// One test's name and whether it passed (with why not).
pub type TestResult = (String, Result<(), String>);

/// One plugin instance: a plugin with a team's configuration (PostHog's "plugin config").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: PluginConfigId,
    pub source: PluginSource,
    pub config: Map<String, Value>,
    pub limits: Limits,
    /// Files uploaded with the configuration (`ctx.attachments`).
    #[serde(default)]
    pub attachments: Vec<crate::host::Attachment>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Compile and `setup` (replacing an instance of the same id only if setup succeeds).
    Load(Box<Instance>),
    Unload {
        id: PluginConfigId,
    },
    /// Run `process_event` of `chain`, in order, on every event (JSON text each).
    Process {
        chain: Vec<PluginConfigId>,
        events: Vec<String>,
    },
    /// Run `on_event` of every instance of `chain` on every (written) event, once each:
    /// retrying is the caller's, so no worker sleeps through a back-off.
    OnEvent {
        chain: Vec<PluginConfigId>,
        events: Vec<String>,
    },
    /// Run one instance's `export_events` on a buffer of written events (JSON text each).
    ExportEvents {
        id: PluginConfigId,
        events: Vec<String>,
    },
    /// Run one of an instance's jobs with its payload (JSON text).
    Job {
        id: PluginConfigId,
        name: String,
        payload: String,
    },
    /// Run one instance's `on_event` (with `event`) or a schedule / `teardown`.
    Hook {
        id: PluginConfigId,
        hook: Hook,
        event: Option<String>,
    },
    /// Run an author's `test.lua` against an instance (`sluice-plugin test`).
    RunTests {
        id: PluginConfigId,
        source: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Response {
    /// `hooks`: the hooks the plugin defines (when it loaded).
    Loaded {
        id: PluginConfigId,
        error: Option<PluginError>,
        hooks: Vec<Hook>,
    },
    Unloaded {
        id: PluginConfigId,
    },
    /// Sent before each instance's pass over a batch: whom to blame if the worker dies
    /// before the matching `Ran`.
    Running {
        id: PluginConfigId,
    },
    /// The instance's pass is over: a failure from here on is not its doing.
    Ran {
        id: PluginConfigId,
    },
    Processed(WireOutput),
    HookDone {
        id: PluginConfigId,
        error: Option<PluginError>,
        logs: Vec<LogEntry>,
        /// What the call sent with `ctx.capture`.
        #[serde(default)]
        captured: Vec<Value>,
    },
    /// Each `test_*` function of a `test.lua` by name, and whether it passed; or why the
    /// file did not run.
    TestsRan {
        id: PluginConfigId,
        results: Result<Vec<TestResult>, PluginError>,
        logs: Vec<LogEntry>,
    },
}

/// A batch after the chain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainOutput {
    pub events: Vec<ProcessedEvent>,
    /// `(instance, event index, error)` for every failed call.
    pub errors: Vec<(PluginConfigId, usize, PluginError)>,
    pub logs: Vec<(PluginConfigId, LogEntry)>,
    /// Seconds each instance spent on the batch.
    #[serde(default)]
    pub durations: Vec<(PluginConfigId, f64)>,
    /// What each instance sent with `ctx.capture` (from `on_event`).
    #[serde(default)]
    pub captured: Vec<(PluginConfigId, Value)>,
}

/// [`ChainOutput`] as it crosses: events as JSON text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct WireOutput {
    pub events: Vec<WireEvent>,
    pub errors: Vec<(PluginConfigId, usize, PluginError)>,
    pub logs: Vec<(PluginConfigId, LogEntry)>,
    pub durations: Vec<(PluginConfigId, f64)>,
    #[serde(default)]
    pub captured: Vec<(PluginConfigId, Value)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct WireEvent {
    pub event: Option<String>,
    pub succeeded: Vec<PluginConfigId>,
    pub failed: Vec<PluginConfigId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessedEvent {
    /// `None`: a plugin dropped it.
    pub event: Option<Value>,
    pub succeeded: Vec<PluginConfigId>,
    pub failed: Vec<PluginConfigId>,
}

pub(crate) async fn write_frame<T: Serialize>(w: &mut (impl AsyncWrite + Unpin), message: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await
}

/// `Ok(None)` at a clean end of stream. A frame over `max_bytes` is refused before it is
/// read.
pub(crate) async fn read_frame<T: for<'de> Deserialize<'de>>(
    r: &mut (impl AsyncRead + Unpin),
    max_bytes: usize,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max_bytes {
        return Err(std::io::Error::other(format!("frame of {len} bytes is over its {max_bytes} byte bound")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map(Some).map_err(std::io::Error::other)
}
