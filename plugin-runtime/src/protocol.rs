//! What the supervisor and a worker process say to each other over the worker's
//! stdin/stdout: length-prefixed JSON frames. One `Process` request carries a whole
//! batch for a team's chain, so the boundary costs one round trip per batch and chain.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::host::LogEntry;
use crate::limits::Limits;
use crate::manifest::PluginSource;
use crate::sandbox::PluginError;

/// A frame larger than this is a broken peer, not a batch.
pub const MAX_FRAME_BYTES: usize = 512 << 20;

/// One plugin instance: a plugin with a team's configuration (PostHog's "plugin config").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: i64,
    pub source: PluginSource,
    pub config: Map<String, Value>,
    pub limits: Limits,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Compile and `setup` (replacing an instance of the same id only if setup succeeds).
    Load(Box<Instance>),
    Unload {
        id: i64,
    },
    /// Run `process_event` of `chain`, in order, on every event.
    Process {
        chain: Vec<i64>,
        events: Vec<Value>,
    },
    /// Run `on_event` of every instance of `chain` on every (written) event; a call that
    /// asks to be retried is, up to `attempts` times with back-off.
    OnEvent {
        chain: Vec<i64>,
        events: Vec<Value>,
        attempts: u32,
    },
    /// Run one instance's `on_event` (with `event`) or a schedule / `teardown`.
    Hook {
        id: i64,
        hook: String,
        event: Option<Value>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// `hooks`: the hooks the plugin defines (when it loaded).
    Loaded {
        id: i64,
        error: Option<PluginError>,
        hooks: Vec<String>,
    },
    Unloaded {
        id: i64,
    },
    /// Sent before each instance's pass over a batch: whom to blame if the worker dies.
    Running {
        id: i64,
    },
    Processed(ChainOutput),
    HookDone {
        id: i64,
        error: Option<PluginError>,
        logs: Vec<LogEntry>,
    },
}

/// A batch after the chain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainOutput {
    pub events: Vec<ProcessedEvent>,
    /// `(instance, event index, error)` for every failed call.
    pub errors: Vec<(i64, usize, PluginError)>,
    pub logs: Vec<(i64, LogEntry)>,
    /// Seconds each instance spent on the batch.
    #[serde(default)]
    pub durations: Vec<(i64, f64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessedEvent {
    /// `None`: a plugin dropped it.
    pub event: Option<Value>,
    pub succeeded: Vec<i64>,
    pub failed: Vec<i64>,
}

pub async fn write_frame<T: Serialize>(w: &mut (impl AsyncWrite + Unpin), message: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await
}

/// `Ok(None)` at a clean end of stream.
pub async fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(std::io::Error::other(format!("frame of {len} bytes is over the limit")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map(Some).map_err(std::io::Error::other)
}
