//! Where a consumer's pending read may start, so that it does not step over the rows it already
//! deleted (PostgreSQL; on SQLite the floor stays 0).
//!
//! Why: a consumer deletes the rows it handled, so the head of its `(consumer, position)` index is
//! a run of dead entries until vacuum removes them (autovacuum looks at most once a minute, and
//! cannot remove them at all while a long transaction runs, a backup's for instance). A read from
//! the head steps over all of them before its first live row: the bench measured 5-12 ms per read,
//! most of the read's cost. A read from past the handled rows does not.
//!
//! Positions are not a cursor (see the outbox module): a transaction that drew position 10 may
//! commit after one that drew 11 was read. So the floor F (every row at or below F was handled)
//! moves past a position M only once no transaction that could hold a row at or below M is still
//! running, which transaction ids tell:
//! - the append statement takes its transaction id before it draws positions
//!   (`pg_current_xact_id()` in its outbox insert), and positions are drawn in increasing order
//!   (an identity sequence, cache 1);
//! - a read sees rows up to M: every row at or below M was drawn before that read, by a
//!   transaction whose id was assigned before it, hence below the id U of the consumer's next
//!   progress transaction (assigned after the read);
//! - a later read whose snapshot's xmin is above U (no transaction below xmin still runs) sees
//!   every such row that committed; once it recorded them, F moves to M, or to just below the first
//!   row it read and did not handle, or to the last row it read when it stopped at its limit.
//!
//! A full read (from position 0) every [`FULL_READ_EVERY`] would catch a row this reasoning missed:
//! such a row is counted (`audit_outbox_read_floor_misses_total`), logged, and the floor goes back
//! to 0. A nonzero count is a bug here, which the tests check for.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// How often a consumer reads from position 0 whatever its floor.
pub const FULL_READ_EVERY: Duration = Duration::from_secs(30);

/// Observations kept while a long transaction holds xmin back (the oldest are dropped: the floor
/// then moves later, never wrongly).
const MAX_SEEN: usize = 64;

/// One consumer's floor, for one lease term (a new leader starts from 0).
pub struct Floor {
    below: i64,
    /// The last read, until its progress is recorded.
    read: Option<Read>,
    /// (highest position a read saw, id of the transaction that recorded it), oldest first.
    seen: VecDeque<(i64, i64)>,
    next_full: Instant,
}

struct Read {
    xmin: Option<i64>,
    /// The positions it returned, ascending.
    positions: Vec<i64>,
    /// It stopped at its limit: rows after its last were not read.
    cut: bool,
}

impl Default for Floor {
    fn default() -> Self {
        Floor { below: 0, read: None, seen: VecDeque::new(), next_full: Instant::now() + FULL_READ_EVERY }
    }
}

impl Floor {
    /// The position the next read starts after (0: a full read).
    pub fn start(&mut self) -> i64 {
        let now = Instant::now();
        if now >= self.next_full {
            self.next_full = now + FULL_READ_EVERY;
            return 0;
        }
        self.below
    }

    /// A read from `from` returned rows at these positions (ascending), under a snapshot whose
    /// xmin is `xmin` (None: not PostgreSQL); `cut`: it stopped at its limit. Returns how many
    /// rows at or below the floor it found: nonzero is a bug, and the floor goes back to 0.
    pub fn read(&mut self, from: i64, positions: Vec<i64>, xmin: Option<i64>, cut: bool) -> usize {
        let missed = match from < self.below {
            true => positions.iter().take_while(|p| **p <= self.below).count(),
            false => 0,
        };
        if missed > 0 {
            self.below = 0;
            self.seen.clear();
        }
        self.read = Some(Read { xmin, positions, cut });
        missed
    }

    /// The last read's progress was recorded by transaction `xid`; `handled`: the positions of
    /// the rows it handled (the others wait for a later read).
    pub fn recorded(&mut self, xid: Option<i64>, handled: &[i64]) {
        let (Some(read), Some(xid)) = (self.read.take(), xid) else { return };
        let Some(xmin) = read.xmin else { return };
        let mut safe = None;
        while let Some(&(highest, recorded_by)) = self.seen.front() {
            if recorded_by >= xmin {
                break;
            }
            safe = safe.max(Some(highest));
            self.seen.pop_front();
        }
        let last = read.positions.last().copied();
        if let Some(mut bound) = safe {
            if let (true, Some(last)) = (read.cut, last) {
                bound = bound.min(last);
            }
            let handled: HashSet<i64> = handled.iter().copied().collect();
            if let Some(first) = read.positions.iter().find(|p| !handled.contains(p)) {
                bound = bound.min(first - 1);
            }
            self.below = self.below.max(bound);
        }
        if let Some(highest) = last {
            if self.seen.len() == MAX_SEEN {
                self.seen.pop_front();
            }
            self.seen.push_back((highest, xid));
        }
    }

    /// Every row at or below this position was handled.
    pub fn below(&self) -> i64 {
        self.below
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read of `positions` from the floor, all handled and recorded by `xid`; the new floor.
    fn step(f: &mut Floor, positions: &[i64], xmin: i64, xid: i64) -> i64 {
        let from = f.below();
        f.read(from, positions.to_vec(), Some(xmin), false);
        f.recorded(Some(xid), positions);
        f.below()
    }

    #[test]
    fn moves_only_once_xmin_passed_the_recording_transaction() {
        let mut f = Floor::default();
        assert_eq!(step(&mut f, &[10, 20], 90, 100), 0, "nothing known yet of transactions running during read 1");
        // xmin 100: transaction 100 itself may still be running.
        assert_eq!(step(&mut f, &[30], 100, 110), 0);
        // xmin 111: above 100 and 110, both observations are safe and the highest wins.
        assert_eq!(step(&mut f, &[40], 111, 120), 30);
    }

    #[test]
    fn never_past_a_row_not_handled_or_not_read() {
        let mut f = Floor::default();
        step(&mut f, &[10, 20], 1, 5);
        // Read 2 stopped at its limit at 15: rows after it were not read.
        f.read(0, vec![12, 15], Some(6), true);
        f.recorded(Some(7), &[12, 15]);
        assert_eq!(f.below(), 15);
        // Read 3 saw up to 25 and held row 17 back (a gap in its tenant's chain): 15 stays, the
        // highest row a safe read saw.
        f.read(15, vec![17, 25], Some(8), false);
        f.recorded(Some(9), &[25]);
        assert_eq!(f.below(), 15);
        // Read 4 makes read 3's 25 safe, but row 17 is still not handled (handled given in
        // another order than read).
        f.read(15, vec![17, 26, 30], Some(10), false);
        f.recorded(Some(11), &[30, 26]);
        assert_eq!(f.below(), 16);
        // Not recorded (lease lost, failure): nothing moves, and the read is forgotten.
        f.read(16, vec![17, 30], Some(100), false);
        f.recorded(None, &[17, 30]);
        assert_eq!(f.below(), 16);
        f.recorded(Some(200), &[17, 30]);
        assert_eq!(f.below(), 16);
    }

    #[test]
    fn without_a_snapshot_the_floor_stays_at_zero() {
        let mut f = Floor::default();
        for xid in 1..5 {
            f.read(0, vec![xid * 10], None, false);
            f.recorded(Some(xid), &[xid * 10]);
        }
        assert_eq!(f.below(), 0);
    }

    #[test]
    fn a_full_read_finding_rows_below_the_floor_resets_it() {
        let mut f = Floor::default();
        step(&mut f, &[10, 20], 1, 5);
        assert_eq!(step(&mut f, &[30], 6, 7), 20);
        assert_eq!(f.read(0, vec![18, 19, 35], Some(8), false), 2);
        assert_eq!(f.below(), 0);
        // A read from the floor (now 0) counts nothing.
        assert_eq!(f.read(0, vec![5], Some(9), false), 0);
    }
}
