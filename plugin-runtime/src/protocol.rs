//! What the supervisor and a worker process say to each other over the worker's
//! stdin/stdout: length-prefixed frames of a JSON header and the events' texts. One
//! `Process` request carries a whole batch for a team's chain, so the boundary costs one
//! round trip per batch and chain.
//!
//! Events cross as their own JSON text, never as nested values: an event is then read
//! on each side with the same nesting limit it was read with before, whatever the frame
//! adds around it. The texts ride after the header as raw bytes ([`Framed`]), not as
//! JSON strings inside it: escaping every quote of every event on the way out and
//! unescaping it on the way in, on both sides, was a quarter of ingest's time per event
//! with one plugin. Answers have a size bound both sides compute from the request
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
        #[serde(skip)]
        events: Vec<String>,
    },
    /// Run `on_event` of every instance of `chain` on every (written) event, once each:
    /// retrying is the caller's, so no worker sleeps through a back-off.
    OnEvent {
        chain: Vec<PluginConfigId>,
        #[serde(skip)]
        events: Vec<String>,
    },
    /// Run one instance's `export_events` on a buffer of written events (JSON text each).
    ExportEvents {
        id: PluginConfigId,
        #[serde(skip)]
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
    /// In the header only whether there is one; the text rides as a blob.
    #[serde(with = "presence")]
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

/// A message whose event texts travel as blobs after its JSON header: the fields
/// holding them are left out of the header, listed by [`Framed::blobs`] in order, and
/// put back by [`Framed::fill`].
pub(crate) trait Framed: Serialize + for<'de> Deserialize<'de> {
    fn blobs(&self) -> Vec<&str>;
    /// Puts the blobs back; `Err` when they do not match the header.
    fn fill(&mut self, blobs: Vec<String>) -> Result<(), &'static str>;
}

impl Framed for Request {
    fn blobs(&self) -> Vec<&str> {
        match self {
            Request::Process { events, .. }
            | Request::OnEvent { events, .. }
            | Request::ExportEvents { events, .. } => events.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        }
    }

    fn fill(&mut self, blobs: Vec<String>) -> Result<(), &'static str> {
        match self {
            Request::Process { events, .. }
            | Request::OnEvent { events, .. }
            | Request::ExportEvents { events, .. } => {
                *events = blobs;
                Ok(())
            }
            _ if blobs.is_empty() => Ok(()),
            _ => Err("a request that carries no events came with some"),
        }
    }
}

impl Framed for Response {
    fn blobs(&self) -> Vec<&str> {
        match self {
            Response::Processed(out) => out.events.iter().filter_map(|e| e.event.as_deref()).collect(),
            _ => Vec::new(),
        }
    }

    fn fill(&mut self, blobs: Vec<String>) -> Result<(), &'static str> {
        let Response::Processed(out) = self else {
            return if blobs.is_empty() { Ok(()) } else { Err("an answer that carries no events came with some") };
        };
        let mut blobs = blobs.into_iter();
        for slot in out.events.iter_mut().filter_map(|e| e.event.as_mut()) {
            *slot = blobs.next().ok_or("fewer event texts than events")?;
        }
        match blobs.next() {
            Some(_) => Err("more event texts than events"),
            None => Ok(()),
        }
    }
}

/// `Option<String>` as whether it is there (the string itself is a blob).
mod presence {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(v.is_some())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(bool::deserialize(d)?.then(String::new))
    }
}

/// `[u32 length][u32 header length][header JSON]([u32 length][bytes])*`, big-endian,
/// written at once.
pub(crate) async fn write_frame<T: Framed>(w: &mut (impl AsyncWrite + Unpin), message: &T) -> std::io::Result<()> {
    let header = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    let blobs = message.blobs();
    let len = 4 + header.len() + blobs.iter().map(|b| 4 + b.len()).sum::<usize>();
    let mut frame = Vec::with_capacity(4 + len);
    for part in [len, header.len()] {
        frame.extend_from_slice(&u32::try_from(part).map_err(std::io::Error::other)?.to_be_bytes());
    }
    frame.extend_from_slice(&header);
    for blob in blobs {
        frame.extend_from_slice(&(blob.len() as u32).to_be_bytes());
        frame.extend_from_slice(blob.as_bytes());
    }
    w.write_all(&frame).await?;
    w.flush().await
}

/// `Ok(None)` at a clean end of stream. A frame over `max_bytes` is refused before it is
/// read.
pub(crate) async fn read_frame<T: Framed>(
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
    let broken = |why: &str| std::io::Error::other(format!("broken frame: {why}"));
    let (header_len, mut rest) = split_len(&body).ok_or_else(|| broken("no header length"))?;
    if header_len > rest.len() {
        return Err(broken("header longer than the frame"));
    }
    let mut message: T = serde_json::from_slice(&rest[..header_len]).map_err(std::io::Error::other)?;
    rest = &rest[header_len..];
    let mut blobs = Vec::new();
    while !rest.is_empty() {
        let (n, after) = split_len(rest).ok_or_else(|| broken("cut blob length"))?;
        if n > after.len() {
            return Err(broken("blob longer than the frame"));
        }
        let text = std::str::from_utf8(&after[..n]).map_err(|_| broken("an event text is not UTF-8"))?;
        blobs.push(text.to_string());
        rest = &after[n..];
    }
    message.fill(blobs).map_err(broken)?;
    Ok(Some(message))
}

fn split_len(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*len) as usize, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn event_texts_cross_as_blobs_and_come_back_in_place() {
        let texts = vec![r#"{"a":"quote \" here"}"#.to_string(), "{}".to_string()];
        let request = Request::Process { chain: vec![PluginConfigId(3)], events: texts.clone() };
        let mut wire = Vec::new();
        write_frame(&mut wire, &request).await.unwrap();
        assert!(wire.windows(texts[0].len()).any(|w| w == texts[0].as_bytes()), "raw, not escaped");
        let back: Request = read_frame(&mut wire.as_slice(), MAX_FRAME_BYTES).await.unwrap().unwrap();
        assert!(matches!(back, Request::Process { events, .. } if events == texts));

        let out = WireOutput {
            events: vec![
                WireEvent { event: Some("{\"x\":1}".into()), succeeded: vec![PluginConfigId(3)], failed: vec![] },
                WireEvent { event: None, succeeded: vec![], failed: vec![] },
                WireEvent { event: Some("{}".into()), succeeded: vec![], failed: vec![PluginConfigId(3)] },
            ],
            ..WireOutput::default()
        };
        let mut wire = Vec::new();
        write_frame(&mut wire, &Response::Processed(out.clone())).await.unwrap();
        let back: Response = read_frame(&mut wire.as_slice(), MAX_FRAME_BYTES).await.unwrap().unwrap();
        assert!(matches!(back, Response::Processed(o) if o == out));
    }

    #[tokio::test]
    async fn frames_that_do_not_add_up_are_refused() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Request::Process { chain: vec![], events: vec!["{}".into()] }).await.unwrap();
        let cut = wire.len() - 1;
        wire.truncate(cut);
        wire[..4].copy_from_slice(&((cut - 4) as u32).to_be_bytes());
        assert!(read_frame::<Request>(&mut wire.as_slice(), MAX_FRAME_BYTES).await.is_err(), "a cut blob");
        let mut wire = Vec::new();
        write_frame(&mut wire, &Request::Unload { id: PluginConfigId(1) }).await.unwrap();
        let extra = [0u8, 0, 0, 2, b'{', b'}'];
        let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize + extra.len();
        wire[..4].copy_from_slice(&(len as u32).to_be_bytes());
        wire.extend_from_slice(&extra);
        assert!(read_frame::<Request>(&mut wire.as_slice(), MAX_FRAME_BYTES).await.is_err(), "texts nobody asked for");
        let big = vec![0u8; 16];
        assert!(
            read_frame::<Request>(&mut &[&[0, 0, 1, 0][..], &big].concat()[..], 8).await.is_err(),
            "over the bound"
        );
    }
}
