//! The memory store's open reservations: a bounded table, each entry kept
//! until its deadline, the soonest deadline evicted first when full.
//!
//! An evicted reservation is settled at its estimate (it is forgotten, and
//! its estimate stays charged), exactly what its deadline would have done
//! later: the table's bound costs utilisation, never exactness.

use std::collections::BTreeSet;

use hashbrown::HashMap;
use smallvec::SmallVec;

use super::Settled;

/// One open (or settled, kept for replays) reservation.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// A keyed hash of the key and the policy names: a settle naming
    /// another key or other policies does not find the reservation.
    pub check: u64,
    /// Store microseconds after which the reservation is forgotten.
    pub deadline: u64,
    /// The units charged by the reservation.
    pub estimate: u64,
    /// Per policy, until when its units may be given back.
    pub untils: SmallVec<[u64; 2]>,
    /// Once settled: the actual cost and what it did, for replays.
    pub settled: Option<(u64, SmallVec<[Settled; 2]>)>,
}

/// Reservations of one shard.
#[derive(Debug, Default)]
pub(crate) struct Table {
    records: HashMap<u128, Record>,
    /// `(deadline, nonce)` of every record: expiry and eviction in order.
    by_deadline: BTreeSet<(u64, u128)>,
}

impl Table {
    /// Open records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The live record of `nonce` (dropping it if past its deadline).
    pub fn get_mut(&mut self, nonce: u128, now: u64) -> Option<&mut Record> {
        let deadline = self.records.get(&nonce)?.deadline;
        if deadline <= now {
            self.records.remove(&nonce);
            self.by_deadline.remove(&(deadline, nonce));
            return None;
        }
        self.records.get_mut(&nonce)
    }

    /// Records a reservation, first dropping every record past its
    /// deadline and then, while the table holds `max` or more, the record
    /// with the soonest deadline. Returns how many live records were
    /// evicted. A nonce already present (the caller drew the same 128
    /// random bits twice, or retried) is replaced.
    pub fn insert(&mut self, nonce: u128, record: Record, now: u64, max: usize) -> u64 {
        if let Some(old) = self.records.remove(&nonce) {
            self.by_deadline.remove(&(old.deadline, nonce));
        }
        let mut evicted = 0;
        while let Some(&(deadline, oldest)) = self.by_deadline.first() {
            if deadline > now && self.records.len() < max.max(1) {
                break;
            }
            self.by_deadline.pop_first();
            self.records.remove(&oldest);
            evicted += u64::from(deadline > now);
        }
        self.by_deadline.insert((record.deadline, nonce));
        self.records.insert(nonce, record);
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::{Record, Table};

    fn record(deadline: u64) -> Record {
        Record {
            check: 7,
            deadline,
            estimate: 1,
            untils: Default::default(),
            settled: None,
        }
    }

    #[test]
    fn a_record_lives_until_its_deadline() {
        let mut table = Table::default();
        table.insert(1, record(100), 0, 10);
        assert!(table.get_mut(1, 99).is_some());
        assert!(table.get_mut(1, 100).is_none());
        assert_eq!(table.len(), 0, "an expired record is dropped when found");
    }

    #[test]
    fn a_full_table_evicts_the_soonest_deadline_and_never_grows_past_its_bound() {
        let mut table = Table::default();
        for nonce in 0..10u128 {
            table.insert(nonce, record(1_000 + nonce as u64), 0, 4);
            assert!(table.len() <= 4);
        }
        // The latest deadlines stay.
        for nonce in 0..10u128 {
            assert_eq!(table.get_mut(nonce, 0).is_some(), nonce >= 6, "{nonce}");
        }
        let evicted = table.insert(99, record(5_000), 0, 4);
        assert_eq!(evicted, 1);
        assert!(table.get_mut(99, 0).is_some());
    }

    #[test]
    fn expired_records_go_before_any_live_one() {
        let mut table = Table::default();
        table.insert(1, record(10), 0, 2);
        table.insert(2, record(1_000), 0, 2);
        let evicted = table.insert(3, record(1_000), 50, 2);
        assert_eq!(evicted, 0, "the expired record made room");
        assert!(table.get_mut(2, 50).is_some());
        assert!(table.get_mut(3, 50).is_some());
    }
}
