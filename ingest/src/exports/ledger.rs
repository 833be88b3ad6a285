//! Which offsets of the exports topic may be committed: every event read is counted
//! until each of its team's export plugins has delivered it or given up on it (then it is
//! in the exports dead-letter topic), and a partition is committed only up to its first
//! event still counted. A crash anywhere re-reads from there: every event is delivered
//! at least once, and those finished after the first unfinished one again.

use std::collections::{BTreeMap, HashMap};

/// One read of one partition: an assignment (epoch) of it. Events of an earlier
/// assignment that finish late are ignored: the partition was read again from its
/// committed offset since, and those events with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Read {
    pub topic: String,
    pub partition: i32,
    pub epoch: u64,
}

/// Where one event came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Position {
    pub read: Read,
    pub offset: i64,
}

#[derive(Debug, Default)]
struct Partition {
    /// Offset → deliveries of it not finished yet, and its bytes.
    open: BTreeMap<i64, (u32, usize)>,
    /// One past the last offset read.
    next: Option<i64>,
}

#[derive(Debug, Default)]
pub(crate) struct Ledger {
    reads: HashMap<Read, Partition>,
    events: usize,
    bytes: usize,
}

impl Ledger {
    /// Records an event read with `deliveries` deliveries to finish (none: it is done).
    pub(crate) fn read(&mut self, at: &Position, deliveries: u32, bytes: usize) {
        // A new assignment of a partition replaces what an earlier one left open.
        let stale: Vec<Read> = self
            .reads
            .keys()
            .filter(|r| r.topic == at.read.topic && r.partition == at.read.partition && r.epoch != at.read.epoch)
            .cloned()
            .collect();
        for read in stale {
            self.forget(&read);
        }
        let partition = self.reads.entry(at.read.clone()).or_default();
        partition.next = Some(partition.next.unwrap_or(at.offset).max(at.offset + 1));
        if deliveries > 0 {
            partition.open.insert(at.offset, (deliveries, bytes));
            self.events += 1;
            self.bytes += bytes;
        }
    }

    /// One delivery of the event at `at` finished (delivered, or given up on and
    /// dead-lettered).
    pub(crate) fn finish(&mut self, at: &Position) {
        let Some(partition) = self.reads.get_mut(&at.read) else { return };
        let Some((left, bytes)) = partition.open.get_mut(&at.offset) else { return };
        *left -= 1;
        if *left == 0 {
            let bytes = *bytes;
            partition.open.remove(&at.offset);
            self.events -= 1;
            self.bytes -= bytes;
        }
    }

    /// Drops what was read from a partition (revoked, or read again under a new
    /// assignment).
    pub(crate) fn forget(&mut self, read: &Read) {
        if let Some(p) = self.reads.remove(read) {
            self.events -= p.open.len();
            self.bytes -= p.open.values().map(|(_, b)| b).sum::<usize>();
        }
    }

    /// For each partition read, the offset to commit: its first unfinished event, or one
    /// past the last read.
    pub(crate) fn committable(&self) -> Vec<(Read, i64)> {
        self.reads
            .iter()
            .filter_map(|(read, p)| {
                let upto = p.open.keys().next().copied().or(p.next)?;
                Some((read.clone(), upto))
            })
            .collect()
    }

    /// Events read and not finished, and their bytes.
    pub(crate) fn pending(&self) -> (usize, usize) {
        (self.events, self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, epoch: u64, offset: i64) -> Position {
        Position { read: Read { topic: "t".into(), partition, epoch }, offset }
    }

    fn offsets(l: &Ledger) -> Vec<(i32, i64)> {
        let mut v: Vec<_> = l.committable().into_iter().map(|(r, o)| (r.partition, o)).collect();
        v.sort();
        v
    }

    #[test]
    fn a_partition_commits_up_to_its_first_unfinished_event() {
        let mut l = Ledger::default();
        l.read(&at(0, 1, 10), 2, 100);
        l.read(&at(0, 1, 11), 0, 50);
        l.read(&at(0, 1, 12), 1, 10);
        l.read(&at(1, 1, 5), 1, 10);
        assert_eq!(offsets(&l), vec![(0, 10), (1, 5)]);
        assert_eq!(l.pending(), (3, 120));
        l.finish(&at(0, 1, 12));
        l.finish(&at(0, 1, 10));
        assert_eq!(offsets(&l), vec![(0, 10), (1, 5)], "10 has a delivery left");
        l.finish(&at(0, 1, 10));
        l.finish(&at(1, 1, 5));
        assert_eq!(offsets(&l), vec![(0, 13), (1, 6)]);
        assert_eq!(l.pending(), (0, 0));
        l.finish(&at(0, 1, 10));
        assert_eq!(l.pending(), (0, 0), "a late second finish changes nothing");
    }

    #[test]
    fn a_new_assignment_forgets_what_the_old_one_left_open() {
        let mut l = Ledger::default();
        l.read(&at(0, 1, 10), 1, 100);
        l.read(&at(0, 1, 11), 1, 100);
        l.finish(&at(0, 1, 11));
        // Reassigned: read again from the committed offset, 10.
        l.read(&at(0, 2, 10), 1, 100);
        assert_eq!(l.pending(), (1, 100));
        l.finish(&at(0, 1, 10));
        assert_eq!(offsets(&l), vec![(0, 10)], "the old read's finish does not move the new one");
        l.finish(&at(0, 2, 10));
        assert_eq!(offsets(&l), vec![(0, 11)]);
    }
}
