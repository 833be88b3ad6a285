//! What waits to be delivered: each plugin's open `export_events` buffer, cut by count,
//! bytes and age (the app server's buffer), and deliveries waiting out a back-off before
//! their next attempt. Pure bookkeeping: the lane decides when to call and what to do
//! with the answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_plugin_runtime::Hook;

use super::ledger::Position;

/// One event read from the exports topic, shared by every delivery of it.
#[derive(Debug)]
pub(crate) struct Item {
    pub at: Position,
    /// Its key on the exports topic, kept for its dead letter.
    pub key: Option<Vec<u8>>,
    /// The event as plugins see it, as JSON text: what the topic carried.
    pub text: String,
}

/// Events for one call (or one call per event, for `on_event`) of one plugin.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub team: i64,
    pub id: i64,
    pub hook: Hook,
    pub items: Vec<Arc<Item>>,
    /// Calls made for it so far.
    pub attempts: u32,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug)]
struct Open {
    items: Vec<Arc<Item>>,
    bytes: usize,
    since: Instant,
}

type Key = (i64, i64, Hook);

#[derive(Debug)]
pub(crate) struct Buffers {
    limits: Limits,
    open: HashMap<Key, Open>,
    waiting: Vec<(Instant, Delivery)>,
}

impl Buffers {
    pub(crate) fn new(limits: Limits) -> Buffers {
        Buffers { limits, open: HashMap::new(), waiting: Vec::new() }
    }

    /// Adds an event to plugin `id`'s buffer for `hook`; answers the deliveries this cut
    /// (the buffer it would overflow, and the buffer once full).
    pub(crate) fn add(&mut self, team: i64, id: i64, hook: Hook, item: Arc<Item>, now: Instant) -> Vec<Delivery> {
        let mut cut = Vec::new();
        let key = (team, id, hook);
        let bytes = item.text.len();
        if self.open.get(&key).is_some_and(|o| o.bytes + bytes > self.limits.max_bytes) {
            cut.extend(self.seal(key));
        }
        let open = self.open.entry(key).or_insert_with(|| Open { items: Vec::new(), bytes: 0, since: now });
        open.items.push(item);
        open.bytes += bytes;
        if open.items.len() >= self.limits.max_events.max(1) || open.bytes >= self.limits.max_bytes {
            cut.extend(self.seal(key));
        }
        cut
    }

    fn seal(&mut self, key: Key) -> Option<Delivery> {
        let open = self.open.remove(&key)?;
        let (team, id, hook) = key;
        Some(Delivery { team, id, hook, items: open.items, attempts: 0 })
    }

    /// Every open buffer of `hook` (`on_event` is not held: its buffers are cut after
    /// each batch read).
    pub(crate) fn seal_hook(&mut self, hook: Hook) -> Vec<Delivery> {
        let keys: Vec<Key> = self.open.keys().filter(|k| k.2 == hook).copied().collect();
        keys.into_iter().filter_map(|k| self.seal(k)).collect()
    }

    /// Buffers past their age and retries whose back-off is over.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Delivery> {
        let old: Vec<Key> =
            self.open.iter().filter(|(_, o)| now >= o.since + self.limits.max_age).map(|(k, _)| *k).collect();
        let mut due: Vec<Delivery> = old.into_iter().filter_map(|k| self.seal(k)).collect();
        let (ready, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.waiting).into_iter().partition(|(at, _)| *at <= now);
        self.waiting = later;
        due.extend(ready.into_iter().map(|(_, d)| d));
        due
    }

    /// Everything, retries included, at once: the lane is stopping.
    pub(crate) fn drain(&mut self) -> Vec<Delivery> {
        let keys: Vec<Key> = self.open.keys().copied().collect();
        let mut all: Vec<Delivery> = keys.into_iter().filter_map(|k| self.seal(k)).collect();
        all.extend(std::mem::take(&mut self.waiting).into_iter().map(|(_, d)| d));
        all
    }

    /// Schedules another attempt of `delivery` (its `attempts` already counted) after
    /// its back-off: `backoff`, doubled for each attempt made after the first.
    pub(crate) fn retry(&mut self, delivery: Delivery, now: Instant) -> Duration {
        let doublings = delivery.attempts.saturating_sub(1).min(20);
        let wait = (self.limits.backoff * 2u32.pow(doublings)).min(self.limits.max_backoff);
        self.waiting.push((now + wait, delivery));
        wait
    }

    /// When the next buffer comes of age or retry comes due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let ages = self.open.values().map(|o| o.since + self.limits.max_age);
        ages.chain(self.waiting.iter().map(|(at, _)| *at)).min()
    }

    /// Whether nothing is buffered or waiting.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.open.is_empty() && self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exports::ledger::Read;

    const LIMITS: Limits = Limits {
        max_events: 3,
        max_bytes: 100,
        max_age: Duration::from_secs(10),
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(5),
    };

    fn item(offset: i64, bytes: usize) -> Arc<Item> {
        let read = Read { topic: "t".into(), partition: 0, epoch: 1 };
        Arc::new(Item { at: Position { read, offset }, key: None, text: "x".repeat(bytes) })
    }

    fn offsets(d: &Delivery) -> Vec<i64> {
        d.items.iter().map(|i| i.at.offset).collect()
    }

    #[test]
    fn buffers_are_cut_by_count_bytes_and_age() {
        let now = Instant::now();
        let mut b = Buffers::new(LIMITS);
        assert!(b.add(1, 7, Hook::ExportEvents, item(0, 10), now).is_empty());
        assert!(b.add(1, 8, Hook::ExportEvents, item(0, 10), now).is_empty(), "another plugin's buffer");
        assert!(b.add(1, 7, Hook::ExportEvents, item(1, 10), now).is_empty());
        let cut = b.add(1, 7, Hook::ExportEvents, item(2, 10), now);
        assert_eq!(cut.iter().map(offsets).collect::<Vec<_>>(), vec![vec![0, 1, 2]], "three events");

        assert!(b.add(1, 7, Hook::ExportEvents, item(3, 60), now).is_empty());
        let cut = b.add(1, 7, Hook::ExportEvents, item(4, 60), now);
        assert_eq!(cut.iter().map(offsets).collect::<Vec<_>>(), vec![vec![3]], "the one that would overflow waits");
        let cut = b.add(1, 7, Hook::ExportEvents, item(5, 200), now);
        assert_eq!(cut.iter().map(offsets).collect::<Vec<_>>(), vec![vec![4], vec![5]], "one too large goes alone");

        assert_eq!(b.next_deadline(), Some(now + LIMITS.max_age));
        assert!(b.due(now + Duration::from_secs(9)).is_empty());
        let due = b.due(now + LIMITS.max_age);
        assert_eq!(due.iter().map(|d| (d.id, offsets(d))).collect::<Vec<_>>(), vec![(8, vec![0])]);
        assert!(b.is_empty());
    }

    #[test]
    fn retries_wait_a_doubling_back_off_up_to_its_cap() {
        let now = Instant::now();
        let mut b = Buffers::new(LIMITS);
        let delivery = |attempts| Delivery { team: 1, id: 7, hook: Hook::OnEvent, items: vec![item(0, 1)], attempts };
        let waits: Vec<u64> = (1..=5).map(|a| b.retry(delivery(a), now).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
        assert_eq!(b.due(now + Duration::from_secs(1)).len(), 1);
        assert_eq!(b.due(now + Duration::from_secs(4)).len(), 2);
        assert_eq!(b.drain().len(), 2, "stopping takes the rest at once");
    }

    #[test]
    fn on_event_buffers_are_cut_after_each_batch() {
        let now = Instant::now();
        let mut b = Buffers::new(LIMITS);
        b.add(1, 7, Hook::OnEvent, item(0, 1), now);
        b.add(1, 8, Hook::ExportEvents, item(0, 1), now);
        let cut = b.seal_hook(Hook::OnEvent);
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].hook, Hook::OnEvent);
        assert!(!b.is_empty(), "export_events keeps its buffer");
    }
}
