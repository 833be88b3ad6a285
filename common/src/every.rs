//! The one loop shape of the background tasks: do something every period until
//! shutdown is signalled.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};
use tracing::{debug, warn};

pub struct Every {
    ticks: Interval,
    stop: watch::Receiver<bool>,
}

impl Every {
    /// Ticks at once, then every `period`.
    pub fn now(period: Duration, stop: watch::Receiver<bool>) -> Every {
        Self::starting(Instant::now(), period, stop)
    }

    /// First tick after one `period` (for work already done once at start).
    pub fn after(period: Duration, stop: watch::Receiver<bool>) -> Every {
        Self::starting(Instant::now() + period, period, stop)
    }

    fn starting(start: Instant, period: Duration, stop: watch::Receiver<bool>) -> Every {
        let mut ticks = interval_at(start, period);
        // A slow round (a Redis timeout, a blocked probe) delays the next one instead of
        // causing a burst of catch-up rounds.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Every { ticks, stop }
    }

    /// Waits for the next tick; `false` once shutdown is signalled.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.ticks.tick() => true,
            _ = self.stop.changed() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_until_stopped() {
        let (tx, rx) = watch::channel(false);
        let mut every = Every::now(Duration::from_secs(1), rx);
        assert!(every.tick().await);
        assert!(every.tick().await);
        tx.send(true).unwrap();
        assert!(!every.tick().await);
    }
}

/// The failures of a background read: told as a warning when they start (a wrong password
/// or certificate shows at start-up), then at debug level until a read succeeds again.
#[derive(Default)]
pub struct Failures {
    failing: bool,
}

impl Failures {
    /// A read failed: `first` is the warning a run of failures starts with, `again` what
    /// the later ones log.
    pub fn failed(&mut self, error: &str, first: &str, again: &str) {
        if std::mem::replace(&mut self.failing, true) {
            debug!(error, "{again}");
        } else {
            warn!(error, "{first}");
        }
    }

    /// A read succeeded; says whether it ends a run of failures.
    pub fn succeeded(&mut self) -> bool {
        std::mem::take(&mut self.failing)
    }
}
