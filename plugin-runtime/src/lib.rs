//! Sluice's plugin runtime: team plugins written in Luau, run sandboxed.
//!
//! A plugin ([`manifest`]) is compiled into its own VM ([`sandbox`]) with memory and CPU
//! limits ([`limits`], [`watchdog`]) and the host API ([`host`]: config, log, cache and
//! storage in [`kv`], [`http`] with an allow-list, json, crypto, time, retry). VMs live
//! in worker processes ([`worker`]) that a [`supervisor`] starts, feeds batches over
//! [`protocol`] frames, and restarts when a plugin takes one down. Every value that
//! crosses between Lua and the host goes through [`convert`], bounded. What authors run
//! on their machine (`sluice-plugin test`, `run`) is [`authoring`].
//!
//! Only what is re-exported here is the crate's surface; the modules are private.

mod authoring;
mod convert;
mod hook;
mod host;
mod http;
mod jobs;
mod kv;
mod limits;
mod manifest;
mod protocol;
mod sandbox;
mod supervisor;
mod watchdog;
mod worker;

pub use authoring::{run_plugin, test_plugin, Workbench};
pub use hook::{Hook, PluginConfigId, PluginError, TeamId};
pub use host::{luau_definitions, open_geoip, Attachment, GeoIp, Host, LogEntry, ATTACHMENT_MAX_BYTES};
pub use jobs::{JobError, JobLimits, JobQueue, QueuedJob};
pub use kv::{KeyValue, KvError, Quota};
pub use limits::{CaptureLimits, HttpLimits, LimitSettings, Limits};
pub use manifest::{
    AskedLimits, ConfigField, FieldType, HttpManifest, Manifest, ManifestError, PluginSource, Schedule,
};
pub use protocol::{ChainOutput, Instance, ProcessedEvent, TestResult};
pub use sandbox::Vm;
pub use supervisor::{ChainRun, HookRun, Settings as SupervisorSettings, Strike, Supervisor};
pub use worker::{serve as serve_worker, WorkerEnv};
