//! Sliding log: every admitted request of the last period, exact.
//!
//! An entry admitted at `t` counts at every instant in `[t, t + period)`.

use std::collections::VecDeque;

use super::Computed;
use crate::{Mode, Policy};

/// Admitted requests, oldest first: `(admitted at µs, cost)`.
///
/// Requests admitted in the same microsecond are merged into one entry; the
/// Redis twin keeps one sorted-set member per unit, which counts the same.
/// A running total keeps a decision from summing every entry: only the
/// expired ones at the front are visited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Log {
    /// `(admitted at µs, cost)`, in admission order (non-decreasing instants).
    pub entries: VecDeque<(u64, u64)>,
    /// The sum of every entry's cost, expired ones included.
    pub total: u64,
}

impl Log {
    pub(super) fn fresh_at(&self, period: u64) -> u64 {
        self.entries.back().map_or(0, |&(t, _)| t + period)
    }

    /// Entries still inside the window at `now`.
    fn active(&self, now: u64, period: u64) -> impl Iterator<Item = &(u64, u64)> {
        self.entries
            .iter()
            .skip_while(move |&&(t, _)| t + period <= now)
    }

    pub(super) fn decide(&mut self, policy: &Policy, now: u64, cost: u64, mode: Mode) -> Computed {
        let period = policy.period_us();
        let limit = policy.limit();
        let expired: u64 = self
            .entries
            .iter()
            .take_while(|&&(t, _)| t + period <= now)
            .map(|&(_, c)| c)
            .sum();
        let used = self.total - expired;
        let allowed = used + cost <= limit;
        // A clock stepping back must not put an entry before a newer one:
        // it is recorded at the newest instant seen, which only delays expiry.
        let stamp = self.entries.back().map_or(now, |&(t, _)| t.max(now));
        let retry_at = if allowed {
            now
        } else {
            // Wait for the oldest entries to expire until `cost` fits.
            let mut excess = used + cost - limit;
            let mut at = now;
            for &(t, c) in self.active(now, period) {
                at = t + period;
                excess = excess.saturating_sub(c);
                if excess == 0 {
                    break;
                }
            }
            at
        };
        let charged = allowed && mode == Mode::Consume;
        let used_after = if charged { used + cost } else { used };
        let fresh_at = if charged {
            stamp + period
        } else {
            self.fresh_at(period)
        };
        if charged {
            while let Some(&(t, c)) = self.entries.front() {
                if t + period > now {
                    break;
                }
                self.entries.pop_front();
                self.total -= c;
            }
            self.total += cost;
            match self.entries.back_mut() {
                Some((t, c)) if *t == stamp => *c += cost,
                _ => self.entries.push_back((stamp, cost)),
            }
        }
        Computed {
            allowed,
            remaining: limit.saturating_sub(used_after),
            fresh_at: if used_after == 0 { 0 } else { fresh_at },
            retry_at,
            delay: 0,
        }
    }
}
