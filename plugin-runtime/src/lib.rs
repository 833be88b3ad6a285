//! Sluice's plugin runtime: team plugins written in Luau, run sandboxed.
//!
//! A plugin ([`manifest`]) is compiled into its own VM ([`sandbox`]) with memory and CPU
//! limits ([`limits`], [`watchdog`]) and the host API ([`host`]: config, log, cache and
//! storage in [`kv`], [`http`] with an allow-list, json, crypto, time, retry). VMs live
//! in worker processes ([`worker`]) that a [`supervisor`] starts, feeds batches over
//! [`protocol`] frames, and restarts when a plugin takes one down. Every value that
//! crosses between Lua and the host goes through [`convert`], bounded.

pub mod convert;
pub mod hook;
pub mod host;
pub mod http;
pub mod kv;
pub mod limits;
pub mod manifest;
pub mod protocol;
pub mod sandbox;
pub mod supervisor;
pub mod watchdog;
pub mod worker;

pub use hook::{Hook, PluginError};
pub use host::{open_geoip, GeoIp, Host, LogEntry};
pub use kv::KeyValue;
pub use limits::Limits;
pub use manifest::{Manifest, PluginSource};
pub use sandbox::Vm;
