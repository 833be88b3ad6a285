//! Where each owned partition stands, and the verdict on each message read: the check
//! that keeps a batch an unbroken run of offsets from where the partition was done (see
//! `consume` for why).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::Partition;

/// Where one owned partition stands.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Track {
    /// The offset the next message must have; `None` until the first message after the
    /// assignment was checked against the committed offset.
    pub(super) next: Option<i64>,
    /// Set after seeking back to this offset to find `next`: offsets below `next` are
    /// then skipped as done, and a second jump over `next` widens the search.
    sought: Option<i64>,
    /// Which assignment this is, so messages read under an earlier one are told apart.
    epoch: u64,
    /// Time the lane spent waiting for messages while none of this partition's came.
    quiet: Duration,
}

/// What to do with one message.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    /// The next offset of an owned partition: it belongs in the batch.
    Take,
    /// Below where the partition is done (read again after seeking back): dropped
    /// without a trace, it was processed before.
    Done,
    /// Below where the partition is done without a seek of ours: the consumer was reset
    /// (its position fell off the log). Done, unless the log itself now ends before
    /// `next` (a broker that lost or emptied the log), when it is taken.
    Behind,
    /// The partition is not assigned here (any more).
    NotOwned,
    /// First message since the assignment: compare with the committed offset first.
    Verify,
    /// Messages before this one were not delivered: seek to `to`, drop this one.
    SeekBack { to: i64 },
    /// The offsets between `next` and this message do not exist in the log (looked for
    /// from the log start, or retention removed them): take this one and go on.
    AcceptGap { from: i64 },
}

/// Every owned partition's [`Track`], kept by the rebalance callbacks and the reader.
#[derive(Default)]
pub(super) struct Positions {
    pub(super) owned: HashMap<Partition, Track>,
    epochs: u64,
    pub(super) revocations: u64,
    /// When the assignment here last changed.
    pub(super) changed: Option<Instant>,
}

impl Positions {
    pub(super) fn assign(&mut self, partition: Partition) {
        self.epochs += 1;
        self.owned.insert(partition, Track { next: None, sought: None, epoch: self.epochs, quiet: Duration::ZERO });
        self.changed = Some(Instant::now());
    }

    pub(super) fn revoke(&mut self, partition: &Partition) {
        self.owned.remove(partition);
        self.revocations += 1;
        self.changed = Some(Instant::now());
    }

    pub(super) fn epoch(&self, partition: &Partition) -> Option<u64> {
        self.owned.get(partition).map(|t| t.epoch)
    }

    /// Judges `offset` and moves the partition's track as the verdict implies.
    pub(super) fn check(&mut self, partition: &Partition, offset: i64, rewind: i64) -> Verdict {
        let Some(track) = self.owned.get_mut(partition) else { return Verdict::NotOwned };
        let Some(next) = track.next else { return Verdict::Verify };
        if offset < next {
            return if track.sought.is_some() { Verdict::Done } else { Verdict::Behind };
        }
        if offset == next {
            track.next = Some(next + 1);
            track.sought = None;
            return Verdict::Take;
        }
        // Sought back before and still jumped over `next`: look further back. Nothing
        // further back to look at (or a search made at `next` itself) means the gap is real.
        let to = match track.sought {
            Some(from) if from >= next => None,
            sought => search_from(sought, next, rewind),
        };
        match to {
            Some(to) => {
                track.sought = Some(to);
                Verdict::SeekBack { to }
            }
            None => {
                track.next = Some(offset + 1);
                track.sought = None;
                Verdict::AcceptGap { from: next }
            }
        }
    }

    /// Counts `waited` (time the lane spent reading) towards every owned partition that
    /// sent nothing in it; returns those that have been quiet for `after` of reading,
    /// each of which starts counting again. `after` zero: never.
    pub(super) fn quiet(&mut self, waited: Duration, heard: &HashSet<Partition>, after: Duration) -> Vec<Partition> {
        let mut due = Vec::new();
        for (partition, track) in &mut self.owned {
            if heard.contains(partition) || after.is_zero() {
                track.quiet = Duration::ZERO;
                continue;
            }
            track.quiet += waited;
            if track.quiet >= after {
                track.quiet = Duration::ZERO;
                due.push(partition.clone());
            }
        }
        due
    }

    /// A quiet partition whose log's end is past `next`: the broker holds messages back.
    /// Where to seek to have them sent: first `rewind` before `next`, then twice as far
    /// each time it stays quiet, down to the log start; `None` when even that was tried.
    /// Offsets read again below `next` are then skipped as done.
    pub(super) fn unstick(&mut self, partition: &Partition, next: i64, rewind: i64) -> Option<i64> {
        let track = self.owned.get_mut(partition)?;
        let next = *track.next.get_or_insert(next);
        let to = search_from(track.sought, next, rewind)?;
        track.sought = Some(to);
        Some(to)
    }

    /// Reads `partition` again from `from` (below `next`), skipping what is done: for a
    /// quiet partition whose last record batch may hold messages past `next` that the
    /// broker does not send (see `consume`).
    pub(super) fn reread(&mut self, partition: &Partition, next: i64, from: i64) {
        if let Some(track) = self.owned.get_mut(partition) {
            track.next.get_or_insert(next);
            track.sought = Some(from);
        }
    }

    /// Sets where a just-assigned partition resumes, from its committed offset.
    pub(super) fn resume_at(&mut self, partition: &Partition, next: i64) {
        if let Some(track) = self.owned.get_mut(partition) {
            track.next = Some(next);
            track.sought = None;
        }
    }

    /// A seek that failed: the next message of the partition tries again.
    pub(super) fn seek_failed(&mut self, partition: &Partition) {
        if let Some(track) = self.owned.get_mut(partition) {
            track.sought = None;
        }
    }
}

/// Where the next search for offset `next` starts, after one from `sought` (if any)
/// did not find it: `rewind` before it, then twice as far back each time, down to the
/// log start; `None` once the log start was searched from.
fn search_from(sought: Option<i64>, next: i64, rewind: i64) -> Option<i64> {
    match sought {
        Some(from) if from <= 0 => None,
        Some(from) if from < next => Some((next - 2 * (next - from)).max(0)),
        _ => Some((next - rewind.max(0)).max(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        ("t".to_string(), n)
    }

    fn owned_at(next: i64) -> Positions {
        let mut positions = Positions::default();
        positions.assign(p(0));
        positions.resume_at(&p(0), next);
        positions
    }

    #[test]
    fn in_order_offsets_are_taken_and_earlier_ones_are_done() {
        let mut positions = owned_at(10);
        assert_eq!(positions.check(&p(0), 10, 100), Verdict::Take);
        assert_eq!(positions.check(&p(0), 11, 100), Verdict::Take);
        assert_eq!(positions.check(&p(0), 5, 100), Verdict::Behind, "not after a seek of ours: checked");
        assert_eq!(positions.check(&p(0), 12, 100), Verdict::Take);
    }

    #[test]
    fn a_just_assigned_partition_is_verified_first_and_unknown_ones_are_not_owned() {
        let mut positions = Positions::default();
        positions.assign(p(0));
        assert_eq!(positions.check(&p(0), 3, 100), Verdict::Verify);
        assert_eq!(positions.check(&p(1), 3, 100), Verdict::NotOwned);
    }

    /// The skipped batch tail: resumed at 12309, the broker hands 12315 first.
    #[test]
    fn a_jump_seeks_back_and_what_is_read_again_is_skipped_until_the_missing_offset() {
        let mut positions = owned_at(12309);
        assert_eq!(positions.check(&p(0), 12315, 100), Verdict::SeekBack { to: 12209 });
        for o in 12250..12309 {
            assert_eq!(positions.check(&p(0), o, 100), Verdict::Done);
        }
        assert_eq!(positions.check(&p(0), 12309, 100), Verdict::Take);
        assert_eq!(positions.check(&p(0), 12310, 100), Verdict::Take);
    }

    #[test]
    fn a_seek_that_lands_too_late_again_looks_twice_as_far_back_down_to_the_log_start() {
        let mut positions = owned_at(1000);
        assert_eq!(positions.check(&p(0), 1100, 100), Verdict::SeekBack { to: 900 });
        assert_eq!(positions.check(&p(0), 1100, 100), Verdict::SeekBack { to: 800 });
        assert_eq!(positions.check(&p(0), 1100, 100), Verdict::SeekBack { to: 600 });
        assert_eq!(positions.check(&p(0), 1100, 100), Verdict::SeekBack { to: 200 });
        assert_eq!(positions.check(&p(0), 1100, 100), Verdict::SeekBack { to: 0 });
        // Read from the log start and still no 1000: those offsets do not exist.
        assert_eq!(positions.check(&p(0), 1100, 100), Verdict::AcceptGap { from: 1000 });
        assert_eq!(positions.check(&p(0), 1101, 100), Verdict::Take);
    }

    /// With no rewind (a broker that fetches correctly) a gap is looked for once, at the
    /// missing offset itself; if it is still absent it does not exist.
    #[test]
    fn without_rewind_a_gap_is_looked_for_once() {
        let mut positions = owned_at(50);
        assert_eq!(positions.check(&p(0), 52, 0), Verdict::SeekBack { to: 50 });
        assert_eq!(positions.check(&p(0), 52, 0), Verdict::AcceptGap { from: 50 });
        assert_eq!(positions.check(&p(0), 53, 0), Verdict::Take);
    }

    /// The tail of the last batch, resumed inside it: nothing arrives. After `after` of
    /// reading the partition is due, is sought back further each time it stays quiet,
    /// and what is read again below `next` is skipped.
    #[test]
    fn a_quiet_partition_is_due_after_reading_time_and_sought_back_further_each_time() {
        let after = Duration::from_secs(5);
        let mut positions = Positions::default();
        positions.assign(p(0));
        positions.assign(p(1));
        let heard: HashSet<Partition> = [p(1)].into();
        assert!(positions.quiet(Duration::from_secs(3), &heard, after).is_empty());
        assert_eq!(positions.quiet(Duration::from_secs(3), &heard, after), vec![p(0)]);
        assert!(positions.quiet(Duration::from_secs(3), &heard, after).is_empty(), "counts again from zero");
        assert!(positions.quiet(Duration::from_secs(60), &HashSet::new(), Duration::ZERO).is_empty(), "off");

        // Unverified until now: the committed offset becomes where it resumes.
        assert_eq!(positions.unstick(&p(0), 1_500, 1_000), Some(500));
        assert_eq!(positions.check(&p(0), 499, 1_000), Verdict::Done);
        assert_eq!(positions.unstick(&p(0), 1_500, 1_000), Some(0), "twice as far, down to the log start");
        assert_eq!(positions.unstick(&p(0), 1_500, 1_000), None, "nothing further back");
        assert_eq!(positions.check(&p(0), 1_499, 1_000), Verdict::Done);
        assert_eq!(positions.check(&p(0), 1_500, 1_000), Verdict::Take);
        assert_eq!(positions.unstick(&p(0), 1_501, 1_000), Some(501), "found: the search starts afresh");
        assert_eq!(positions.unstick(&p(2), 7, 1_000), None, "not owned");

        // Read again from a batch's start: skipped up to where it was done.
        positions.assign(p(3));
        positions.reread(&p(3), 9, 7);
        assert_eq!(positions.check(&p(3), 7, 1_000), Verdict::Done);
        assert_eq!(positions.check(&p(3), 8, 1_000), Verdict::Done);
        assert_eq!(positions.check(&p(3), 9, 1_000), Verdict::Take);
    }

    #[test]
    fn a_failed_seek_is_tried_again_by_the_next_message() {
        let mut positions = owned_at(10);
        assert_eq!(positions.check(&p(0), 20, 5), Verdict::SeekBack { to: 5 });
        positions.seek_failed(&p(0));
        assert_eq!(positions.check(&p(0), 21, 5), Verdict::SeekBack { to: 5 });
    }

    #[test]
    fn revocation_forgets_the_partition_and_a_new_assignment_starts_unverified() {
        let mut positions = owned_at(10);
        let first = positions.epoch(&p(0));
        positions.revoke(&p(0));
        assert_eq!(positions.check(&p(0), 10, 100), Verdict::NotOwned);
        positions.assign(p(0));
        assert_ne!(positions.epoch(&p(0)), first);
        assert_eq!(positions.check(&p(0), 10, 100), Verdict::Verify);
    }
}
