//! Both binaries log the same way: to stderr (ingest's stdout is its operator commands'
//! output), filtered by `RUST_LOG`, as JSON in production.
//!
//! A warning that repeats is worth reading once, not a hundred thousand times: while a
//! broker is down, capture refuses every request with the same words. So identical
//! warnings and errors (same place in the code, same fields) pass [`PER_WINDOW`] times
//! per [`WINDOW`]; the rest are held back and counted, and one line per window says how
//! many were held and what they said. Every code path gets this by logging through
//! `tracing`; none has to remember it.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How long identical lines are counted together.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Identical warnings let through per window before the rest are held back.
pub const PER_WINDOW: u32 = 3;
/// Distinct warnings tracked at once; past it, new ones pass unlimited rather than be lost.
const MAX_TRACKED: usize = 4096;
/// The target of the lines that report what was held back (never held back themselves).
pub const HELD_BACK_TARGET: &str = "sluice::log_repeats";

/// Installs the subscriber; a second call (tests running several services in one
/// process) keeps the first.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| "info".into());
    let repeats = Arc::new(Repeats::new(WINDOW, PER_WINDOW, MAX_TRACKED));
    // Colours only for a person at a terminal, not in files and collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt.with_filter(HoldRepeats(repeats.clone())))
        .try_init()
        .is_ok();
    if installed {
        // The report of what was held back is logged from a thread of its own: a
        // subscriber cannot log from inside its own handling of a line.
        let _ = std::thread::Builder::new().name("log-repeats".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            for held in repeats.due(Instant::now()) {
                tracing::warn!(
                    target: HELD_BACK_TARGET,
                    held = held.count,
                    seconds = held.over.as_secs(),
                    line = %held.line,
                    "identical log lines held back"
                );
            }
        });
    }
}

/// What was held back of one line in one window.
#[derive(Debug, PartialEq)]
pub struct Held {
    pub line: String,
    pub count: u64,
    pub over: Duration,
}

struct Entry {
    since: Instant,
    passed: u32,
    held: u64,
    line: String,
}

/// The counts behind [`HoldRepeats`], by line.
pub struct Repeats {
    window: Duration,
    per_window: u32,
    max_tracked: usize,
    lines: Mutex<HashMap<u64, Entry>>,
    /// Windows that ended with lines held back, not yet reported.
    ended: Mutex<Vec<Held>>,
}

impl Repeats {
    pub fn new(window: Duration, per_window: u32, max_tracked: usize) -> Repeats {
        Repeats { window, per_window, max_tracked, lines: Mutex::default(), ended: Mutex::default() }
    }

    /// Whether a line with this key may be written now; `line` renders it for the report.
    pub fn admit(&self, key: u64, now: Instant, line: impl FnOnce() -> String) -> bool {
        let mut lines = self.lines.lock().expect("log repeats lock");
        if let Some(entry) = lines.get_mut(&key) {
            if now.duration_since(entry.since) >= self.window {
                if entry.held > 0 {
                    let over = now.duration_since(entry.since);
                    let held = Held { line: entry.line.clone(), count: entry.held, over };
                    self.ended.lock().expect("log repeats lock").push(held);
                }
                *entry = Entry { since: now, passed: 1, held: 0, line: std::mem::take(&mut entry.line) };
                return true;
            }
            if entry.passed < self.per_window {
                entry.passed += 1;
                return true;
            }
            entry.held += 1;
            return false;
        }
        if lines.len() < self.max_tracked {
            lines.insert(key, Entry { since: now, passed: 1, held: 0, line: line() });
        }
        true
    }

    /// What was held back in windows that have ended; forgets lines quiet for a while.
    pub fn due(&self, now: Instant) -> Vec<Held> {
        let mut due = std::mem::take(&mut *self.ended.lock().expect("log repeats lock"));
        let mut lines = self.lines.lock().expect("log repeats lock");
        lines.retain(|_, entry| {
            let age = now.duration_since(entry.since);
            if age >= self.window && entry.held > 0 {
                due.push(Held { line: entry.line.clone(), count: entry.held, over: age });
                entry.held = 0;
            }
            age < self.window * 3
        });
        due
    }
}

/// The per-layer filter that holds back repeated warnings and errors.
struct HoldRepeats(Arc<Repeats>);

impl<S: Subscriber> Filter<S> for HoldRepeats {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN || meta.target() == HELD_BACK_TARGET {
            return true;
        }
        let mut rendered = Rendered(String::new());
        event.record(&mut rendered);
        let mut hasher = DefaultHasher::new();
        meta.callsite().hash(&mut hasher);
        rendered.0.hash(&mut hasher);
        self.0.admit(hasher.finish(), Instant::now(), || {
            let mut line = format!("{} {}: {}", meta.level(), meta.target(), rendered.0);
            if line.len() > 300 {
                let cut = (0..=300).rev().find(|i| line.is_char_boundary(*i)).unwrap_or(0);
                line.truncate(cut);
                line.push('…');
            }
            line
        })
    }
}

/// A line's fields as text: what makes two lines identical.
struct Rendered(String);

impl Visit for Rendered {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let sep = if self.0.is_empty() { "" } else { " " };
        if field.name() == "message" {
            let _ = write!(self.0, "{sep}{value:?}");
        } else {
            let _ = write!(self.0, "{sep}{}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_lines_pass_a_few_times_per_window_and_the_rest_are_counted() {
        let repeats = Repeats::new(Duration::from_secs(10), 3, 100);
        let t0 = Instant::now();
        let passed =
            (0..1000).filter(|i| repeats.admit(7, t0 + Duration::from_millis(*i), || "broker down".into())).count();
        assert_eq!(passed, 3);
        assert!(repeats.admit(8, t0, || "another line".into()), "other lines are not held");
        assert!(repeats.due(t0 + Duration::from_secs(5)).is_empty(), "the window has not ended");
        let due = repeats.due(t0 + Duration::from_secs(11));
        assert_eq!(due, vec![Held { line: "broker down".into(), count: 997, over: Duration::from_secs(11) }]);
        assert!(repeats.admit(7, t0 + Duration::from_secs(12), || unreachable!("still tracked")));
        assert!(repeats.due(t0 + Duration::from_secs(60)).is_empty(), "reported once");
    }

    #[test]
    fn a_window_ending_on_a_new_line_reports_what_it_held() {
        let repeats = Repeats::new(Duration::from_secs(1), 1, 100);
        let t0 = Instant::now();
        assert!(repeats.admit(1, t0, || "x".into()));
        assert!(!repeats.admit(1, t0, || "x".into()));
        assert!(repeats.admit(1, t0 + Duration::from_secs(2), || "x".into()), "a new window");
        assert_eq!(repeats.due(t0 + Duration::from_secs(2)).iter().map(|h| h.count).sum::<u64>(), 1);
    }

    #[test]
    fn past_the_tracking_bound_lines_pass_rather_than_vanish() {
        let repeats = Repeats::new(Duration::from_secs(10), 1, 2);
        let t0 = Instant::now();
        for key in 0..2 {
            repeats.admit(key, t0, String::new);
        }
        for _ in 0..5 {
            assert!(repeats.admit(99, t0, String::new));
        }
    }
}
