//! What one plugin VM may use. The operator sets these; a plugin cannot raise them.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Lua heap of one VM. Host buffers (http bodies, cache values) have caps of their own.
    pub memory_bytes: usize,
    /// Wall time of one `process_event` call.
    pub process_event_wall: Duration,
    /// Interrupts (loop back-edges, calls) one `process_event` call may take: a budget
    /// that does not depend on the machine's speed or load.
    pub process_event_ticks: u64,
    /// Wall time of `setup`, `on_event`, a schedule, `teardown`.
    pub hook_wall: Duration,
    pub hook_ticks: u64,
    /// Largest log line; longer lines are cut.
    pub log_line_bytes: usize,
    /// Log lines one VM may write per minute; the rest are counted and dropped.
    pub log_lines_per_minute: u32,
    /// Largest value `cache.set` / `storage.set` accept.
    pub value_bytes: usize,
    pub http: HttpLimits,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HttpLimits {
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub max_requests_per_call: u32,
    /// Lets plugins reach loopback, private and link-local addresses (tests, on-premise
    /// receivers). Off by default: those are the cluster's own services.
    pub allow_private_addresses: bool,
    /// Lets plugins that ask for it use `http.fetch` inside `process_event`.
    pub allow_in_process_event: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 32 << 20,
            process_event_wall: Duration::from_millis(50),
            process_event_ticks: 2_000_000,
            hook_wall: Duration::from_secs(30),
            hook_ticks: 1_000_000_000,
            log_line_bytes: 1024,
            log_lines_per_minute: 600,
            value_bytes: 64 << 10,
            http: HttpLimits {
                timeout: Duration::from_secs(5),
                max_response_bytes: 1 << 20,
                max_requests_per_call: 50,
                allow_private_addresses: false,
                allow_in_process_event: false,
            },
        }
    }
}
