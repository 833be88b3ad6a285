//! Wall-clock limits without reading the clock in the VM.
//!
//! Luau calls the interrupt at loop back-edges and calls, very often: reading the clock
//! there is slow. Instead a [`Guard`] holds a deadline and an `expired` flag; one thread
//! per process checks the armed deadlines every few milliseconds and sets the flag, and
//! the interrupt only loads it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// How often deadlines are checked: a 50 ms limit fires by 55 ms.
const RESOLUTION: Duration = Duration::from_millis(5);

#[derive(Debug, Default)]
pub struct Guard {
    /// Microseconds since the watchdog's epoch; 0 = not armed.
    deadline_us: AtomicU64,
    expired: AtomicBool,
    ticks: AtomicU64,
    tick_budget: AtomicU64,
}

impl Guard {
    /// A guard the process's watchdog thread watches for as long as it lives.
    pub fn new() -> Arc<Guard> {
        let guard = Arc::new(Guard::default());
        watchdog().guards.lock().expect("watchdog lock").push(Arc::downgrade(&guard));
        guard
    }

    /// Starts a limited call.
    pub fn arm(&self, wall: Duration, ticks: u64) {
        let w = watchdog();
        let deadline = (w.epoch.elapsed() + wall).as_micros() as u64;
        self.expired.store(false, Ordering::Relaxed);
        self.ticks.store(0, Ordering::Relaxed);
        self.tick_budget.store(ticks, Ordering::Relaxed);
        self.deadline_us.store(deadline.max(1), Ordering::Release);
    }

    /// Stops the clock of an armed, unexpired call while the host awaits I/O for it;
    /// returns the time it had left, for [`Guard::resume`].
    pub fn pause(&self) -> Option<Duration> {
        let deadline = self.deadline_us.load(Ordering::Acquire);
        if deadline == 0 || self.expired.load(Ordering::Relaxed) {
            return None;
        }
        self.deadline_us.store(0, Ordering::Release);
        let now = watchdog().epoch.elapsed().as_micros() as u64;
        Some(Duration::from_micros(deadline.saturating_sub(now)))
    }

    /// Time left to an armed call, if any.
    pub fn left(&self) -> Option<Duration> {
        let deadline = self.deadline_us.load(Ordering::Acquire);
        let now = watchdog().epoch.elapsed().as_micros() as u64;
        (deadline != 0).then(|| Duration::from_micros(deadline.saturating_sub(now)))
    }

    /// Marks the call out of time now, for a wait the host cut at the deadline (the
    /// watchdog's next round might come a little later).
    pub fn expire(&self) {
        if self.deadline_us.load(Ordering::Acquire) != 0 {
            self.expired.store(true, Ordering::Relaxed);
        }
    }

    /// Restarts the clock with the time left at [`Guard::pause`]; ticks go on counting.
    pub fn resume(&self, left: Duration) {
        let deadline = (watchdog().epoch.elapsed() + left).as_micros() as u64;
        self.deadline_us.store(deadline.max(1), Ordering::Release);
    }

    pub fn disarm(&self) {
        self.deadline_us.store(0, Ordering::Release);
        self.expired.store(false, Ordering::Relaxed);
    }

    /// Called from the VM's interrupt: which limit, if any, the call has hit.
    pub fn check(&self) -> Option<Exceeded> {
        if self.deadline_us.load(Ordering::Relaxed) == 0 {
            return None;
        }
        if self.expired.load(Ordering::Relaxed) {
            return Some(Exceeded::Time);
        }
        let ticks = self.ticks.fetch_add(1, Ordering::Relaxed) + 1;
        (ticks > self.tick_budget.load(Ordering::Relaxed)).then_some(Exceeded::Ticks)
    }
}

impl Guard {
    /// After a call: which limit it hit, without counting a tick.
    pub fn hit(&self) -> Option<Exceeded> {
        if self.expired.load(Ordering::Relaxed) {
            Some(Exceeded::Time)
        } else if self.ticks.load(Ordering::Relaxed) > self.tick_budget.load(Ordering::Relaxed) {
            Some(Exceeded::Ticks)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Time,
    Ticks,
}

struct Watchdog {
    epoch: Instant,
    guards: Mutex<Vec<Weak<Guard>>>,
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<&'static Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let w: &'static Watchdog = Box::leak(Box::new(Watchdog { epoch: Instant::now(), guards: Mutex::default() }));
        std::thread::Builder::new()
            .name("plugin-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(RESOLUTION);
                let now = w.epoch.elapsed().as_micros() as u64;
                let mut guards = w.guards.lock().expect("watchdog lock");
                guards.retain(|g| match g.upgrade() {
                    Some(g) => {
                        let deadline = g.deadline_us.load(Ordering::Acquire);
                        if deadline != 0 && now >= deadline {
                            g.expired.store(true, Ordering::Relaxed);
                        }
                        true
                    }
                    None => false,
                });
            })
            .expect("watchdog thread starts");
        w
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_expires_and_a_budget_runs_out() {
        let g = Guard::new();
        assert_eq!(g.check(), None, "not armed");
        g.arm(Duration::from_millis(20), u64::MAX);
        assert_eq!(g.check(), None);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(g.check(), Some(Exceeded::Time));
        g.arm(Duration::from_secs(10), 3);
        assert_eq!((g.check(), g.check(), g.check(), g.check()), (None, None, None, Some(Exceeded::Ticks)));
        g.disarm();
        assert_eq!(g.check(), None);
    }

    #[test]
    fn a_paused_clock_does_not_run_out() {
        let g = Guard::new();
        g.arm(Duration::from_millis(30), u64::MAX);
        let left = g.pause().expect("armed");
        assert!(left <= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(g.check(), None, "paused");
        g.resume(left);
        assert_eq!(g.check(), None, "the time left is still there");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(g.check(), Some(Exceeded::Time));
        assert_eq!(g.pause(), None, "an expired call stays expired");
    }
}
