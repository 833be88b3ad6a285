//! What stopping means for ingest: SIGTERM starts it and sets the drain deadline, by which
//! the batch in flight, queued plugin exports and teardowns must be done.

use std::sync::Arc;
use std::time::Duration;

/// Whether SIGTERM has come, and the drain deadline it set: shared by the run loop and
/// the `on_event` exporter, which both stop by it.
#[derive(Clone, Default)]
pub(crate) struct Stopping {
    token: tokio_util::sync::CancellationToken,
    deadline: Arc<std::sync::OnceLock<tokio::time::Instant>>,
}

impl Stopping {
    pub(crate) fn begin(&self, drain: Duration) {
        let _ = self.deadline.set(tokio::time::Instant::now() + drain);
        self.token.cancel();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    pub(crate) async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Resolves at the drain deadline, once stopping has begun.
    pub(crate) async fn deadline_passed(&self) {
        self.token.cancelled().await;
        tokio::time::sleep_until(self.deadline.get().copied().unwrap_or_else(tokio::time::Instant::now)).await;
    }

    /// Time left before the deadline; `drain` while stopping has not begun.
    pub(crate) fn left(&self, drain: Duration) -> Duration {
        self.deadline.get().map_or(drain, |d| d.saturating_duration_since(tokio::time::Instant::now()))
    }
}
