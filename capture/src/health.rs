//! Liveness and readiness, fed by the parts they describe.
//!
//! Liveness means "this process still makes progress": the server loop and the producer's
//! own thread each tick a heartbeat, and a stale one fails the probe so the orchestrator
//! restarts a wedged process. Readiness means "send me traffic": the broker is reachable
//! and the process is not shutting down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_common::health::{Heartbeat, Probes};

#[derive(Clone)]
pub(crate) struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    stall_after: Duration,
    broker_up: AtomicBool,
    shutting_down: AtomicBool,
    server: Heartbeat,
    producer: Heartbeat,
}

impl Health {
    pub(crate) fn new(stall_after: Duration) -> Self {
        Health {
            inner: Arc::new(Inner {
                stall_after,
                broker_up: AtomicBool::new(true),
                shutting_down: AtomicBool::new(false),
                server: Heartbeat::default(),
                producer: Heartbeat::default(),
            }),
        }
    }

    pub(crate) fn tick_server(&self) {
        self.inner.server.tick();
    }

    pub(crate) fn tick_producer(&self) {
        self.inner.producer.tick();
    }

    pub(crate) fn set_broker_up(&self, up: bool) {
        self.inner.broker_up.store(up, Ordering::Relaxed);
    }

    pub(crate) fn broker_up(&self) -> bool {
        self.inner.broker_up.load(Ordering::Relaxed)
    }

    pub(crate) fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
    }

    pub(crate) fn shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Relaxed)
    }
}

impl Probes for Health {
    fn liveness(&self) -> Result<(), &'static str> {
        if self.inner.server.stalled(self.inner.stall_after) {
            return Err("server loop stalled");
        }
        if self.inner.producer.stalled(self.inner.stall_after) {
            return Err("kafka producer stalled");
        }
        Ok(())
    }

    fn readiness(&self) -> Result<(), &'static str> {
        if self.shutting_down() {
            return Err("shutting down");
        }
        if !self.broker_up() {
            return Err("kafka unreachable");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_heartbeats_fail_liveness() {
        let h = Health::new(Duration::from_millis(20));
        h.tick_server();
        h.tick_producer();
        assert_eq!(h.liveness(), Ok(()));
        std::thread::sleep(Duration::from_millis(30));
        h.tick_server();
        assert_eq!(h.liveness(), Err("kafka producer stalled"));
        h.tick_producer();
        assert_eq!(h.liveness(), Ok(()));
    }

    #[test]
    fn readiness_follows_broker_and_shutdown() {
        let h = Health::new(Duration::from_secs(1));
        assert_eq!(h.readiness(), Ok(()));
        h.set_broker_up(false);
        assert_eq!(h.readiness(), Err("kafka unreachable"));
        h.set_broker_up(true);
        h.begin_shutdown();
        assert_eq!(h.readiness(), Err("shutting down"));
    }
}
