//! The memory store's reservations: a bounded table, each entry kept until
//! its deadline. When full, settled reservations (kept only to answer a
//! retried settle) go first, then the open one with the soonest deadline.
//!
//! An evicted open reservation is settled at its estimate (it is forgotten,
//! and its estimate stays charged), exactly what its deadline would have
//! done later: the table's bound costs utilisation, never exactness.

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
    /// A keyed hash of the key: whose share of the table it counts in.
    pub identity: u64,
    /// Store microseconds after which the reservation is forgotten.
    pub deadline: u64,
    /// The units charged by the reservation.
    pub estimate: u64,
    /// Per policy, what its estimate was charged in.
    pub marks: SmallVec<[Mark; 2]>,
    /// Once settled: the actual cost and what it did, for replays.
    pub settled: Option<(u64, SmallVec<[Settled; 2]>)>,
}

/// What one policy's estimate was charged in: until when units may be
/// given back ([`lease_until`](crate::algorithm::lease_until) of the state
/// before the charge), under which algorithm and period. A settle under
/// other numbers gives nothing back: the window the estimate went into is
/// not the one its `until` would name under another period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub until: u64,
    pub algorithm: crate::Algorithm,
    pub period_us: u64,
}

/// The store's reservations.
#[derive(Debug, Default)]
pub(crate) struct Table {
    records: HashMap<u128, Record>,
    /// `(deadline, nonce)` of every open record: expiry and eviction in
    /// order.
    open: BTreeSet<(u64, u128)>,
    /// `(deadline, nonce)` of every settled record (evicted first).
    settled: BTreeSet<(u64, u128)>,
    /// Per identity, `(deadline, nonce)` of its open records: an identity
    /// holds at most a share of the table ([`IDENTITY_SHARE`]).
    by_identity: HashMap<u64, BTreeSet<(u64, u128)>>,
}

/// One identity holds at most `1 / IDENTITY_SHARE` of the table's open
/// reservations, its own nearest their deadline forgotten first: one
/// identity's flood of reservations cannot push out everyone else's. A
/// client that reserves under many identities still can (docs/SERVER.md,
/// "Limits and timeouts").
pub(crate) const IDENTITY_SHARE: usize = 8;

impl Table {
    /// Records held, open and settled.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The live record of `nonce` (dropping it if past its deadline).
    pub fn get_mut(&mut self, nonce: u128, now: u64) -> Option<&mut Record> {
        if self.records.get(&nonce)?.deadline <= now {
            self.remove(nonce);
            return None;
        }
        self.records.get_mut(&nonce)
    }

    /// Marks `nonce`'s record settled at `actual` (if still held); a
    /// cancel (`actual` 0) drops it instead: it gave everything back, so a
    /// retry has nothing to charge twice, and a record kept for replays
    /// would let a reserve-and-cancel loop hold records no budget paid for.
    pub fn settle(&mut self, nonce: u128, actual: u64, settled: SmallVec<[Settled; 2]>) {
        if actual == 0 {
            self.remove(nonce);
            return;
        }
        let Some(record) = self.records.get_mut(&nonce) else {
            return;
        };
        let (deadline, identity) = (record.deadline, record.identity);
        let was_open = record.settled.is_none();
        record.settled = Some((actual, settled));
        if was_open {
            self.open.remove(&(deadline, nonce));
            self.unindex_identity(identity, deadline, nonce);
            self.settled.insert((deadline, nonce));
        }
    }

    /// Drops `nonce`'s record from the table and every index; whether it
    /// was open.
    fn remove(&mut self, nonce: u128) -> bool {
        let Some(record) = self.records.remove(&nonce) else {
            return false;
        };
        let key = (record.deadline, nonce);
        if record.settled.is_some() {
            self.settled.remove(&key);
            false
        } else {
            self.open.remove(&key);
            self.unindex_identity(record.identity, record.deadline, nonce);
            true
        }
    }

    fn unindex_identity(&mut self, identity: u64, deadline: u64, nonce: u128) {
        if let Some(own) = self.by_identity.get_mut(&identity) {
            own.remove(&(deadline, nonce));
            if own.is_empty() {
                self.by_identity.remove(&identity);
            }
        }
    }

    /// Records an open reservation. First drops every record past its
    /// deadline; then, while its identity holds its share of `max`, that
    /// identity's open record nearest its deadline; then, while the table
    /// holds `max` or more, the settled record nearest its deadline, else
    /// the open one. Returns how many open records were evicted (settled at
    /// their estimate). A nonce already present (the caller drew the same
    /// 128 random bits twice) is replaced.
    pub fn insert(&mut self, nonce: u128, record: Record, now: u64, max: usize) -> u64 {
        self.remove(nonce);
        for settled in [true, false] {
            loop {
                let index = if settled { &self.settled } else { &self.open };
                match index.first() {
                    Some(&(deadline, oldest)) if deadline <= now => {
                        self.remove(oldest);
                    }
                    _ => break,
                }
            }
        }
        let max = max.max(1);
        let share = (max / IDENTITY_SHARE).max(1);
        let mut evicted = 0;
        while let Some(own) = self.by_identity.get(&record.identity) {
            if own.len() < share {
                break;
            }
            let Some(&(_, oldest)) = own.first() else {
                break;
            };
            evicted += u64::from(self.remove(oldest));
        }
        while self.records.len() >= max {
            let oldest = match self.settled.first().or_else(|| self.open.first()) {
                Some(&(_, oldest)) => oldest,
                None => break,
            };
            evicted += u64::from(self.remove(oldest));
        }
        let key = (record.deadline, nonce);
        self.open.insert(key);
        self.by_identity
            .entry(record.identity)
            .or_default()
            .insert(key);
        self.records.insert(nonce, record);
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::{Record, Table};

    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 32);

    fn record(deadline: u64) -> Record {
        Record {
            check: 7,
            // An identity of its own (shares are tested on their own).
            identity: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            deadline,
            estimate: 1,
            marks: Default::default(),
            settled: None,
        }
    }

    #[test]
    fn one_identity_holds_at_most_its_share_evicting_its_own_first() {
        let mut table = Table::default();
        let of = |identity: u64, deadline: u64| Record {
            identity,
            ..record(deadline)
        };
        table.insert(100, of(1, 10_000), 0, 16);
        // Identity 2 floods: it keeps at most 16 / 8 = 2 open, its own
        // soonest going first; identity 1's reservation stays.
        for nonce in 0..10u128 {
            table.insert(nonce, of(2, 1_000 + nonce as u64), 0, 16);
        }
        assert!(table.get_mut(100, 0).is_some());
        assert_eq!(table.len(), 3);
        assert!(table.get_mut(9, 0).is_some() && table.get_mut(8, 0).is_some());
    }

    #[test]
    fn a_cancel_drops_its_record() {
        let mut table = Table::default();
        table.insert(1, record(100), 0, 8);
        table.settle(1, 0, Default::default());
        assert_eq!(table.len(), 0);
        assert!(table.get_mut(1, 0).is_none());
    }

    #[test]
    fn settled_records_go_before_any_open_one_and_are_not_counted() {
        let mut table = Table::default();
        table.insert(1, record(100), 0, 2);
        table.insert(2, record(5_000), 0, 2);
        table.settle(2, 7, Default::default());
        // Full: the settled record goes, though its deadline is later.
        assert_eq!(table.insert(3, record(1_000), 0, 2), 0);
        assert!(table.get_mut(2, 0).is_none());
        assert!(table.get_mut(1, 0).is_some() && table.get_mut(3, 0).is_some());
        // Then the open one nearest its deadline, counted.
        assert_eq!(table.insert(4, record(1_000), 0, 2), 1);
        assert!(table.get_mut(1, 0).is_none());
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
