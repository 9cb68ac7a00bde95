//! The store's health as the server sees it: a background probe that
//! brings the circuit breaker back without traffic, and what is logged
//! when the store starts or stops failing.
//!
//! - **Both stores.** With a per-second store (`store.per_second`), each
//!   store has its own breaker, health and log lines (field `store`:
//!   `main` or `per_second`); both are probed, and readiness needs both.
//! - **Probe.** [`watch_store`] runs for the server's life. It probes each
//!   store once at start, then every breaker cool-down (the shorter of the
//!   two; at least 100 ms, at most 1 s) while it is failing or its breaker is not closed:
//!   one peek through the breaker ([`Resilient::probe`]), so a store that
//!   comes back closes the breaker, and readiness follows, with no request
//!   arriving. A healthy store is not probed.
//! - **Logs: state changes, not decisions.** The store is *failing* from
//!   the moment the breaker opens (seen after any decision) or a probe
//!   fails, until a probe succeeds with the breaker closed. Each change is
//!   one line: `ERROR store failing` with the cause (the store's last
//!   error, explained by [`crate::ServerStore::explain`]) and the failure
//!   mode, or `INFO store recovered`. Lines are
//!   rate-limited: two at once, then one per [`LINE_EVERY`]; changes in
//!   between are counted (`changes_not_logged`) and the state reached is
//!   logged when the next line is allowed, so the log always ends up
//!   saying how things are. While failing, a failed probe repeats the cause
//!   (`ERROR store still failing`) at most once per [`RETRY_LINE_EVERY`].
//! - **Waking gRPC health.** Each change is published on a watch channel
//!   ([`App::store_status`]), so gRPC health re-checks readiness at once
//!   rather than at its next poll.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
#[cfg(doc)]
use tollgate::resilience::Resilient;

use crate::app::App;
use crate::config::FailureMode;

/// After a burst of [`LINE_BURST`] lines, at most one state change line per
/// this long.
pub const LINE_EVERY: Duration = Duration::from_secs(5);

/// State change lines allowed at once: a failure and its recovery.
pub const LINE_BURST: u32 = 2;

/// While the store keeps failing, its cause is repeated at most this often.
pub const RETRY_LINE_EVERY: Duration = Duration::from_secs(30);

/// What the server believes about its store, and what it has logged.
#[derive(Debug)]
pub(crate) struct StoreHealth {
    /// Read on every decision; written on a change only.
    failing: AtomicBool,
    /// `true` while failing; every change is sent.
    status: watch::Sender<bool>,
    log: Mutex<LogState>,
}

#[derive(Debug)]
struct LogState {
    /// The state the latest line announced.
    reported_failing: bool,
    /// When the store started failing (as believed now).
    failing_since: Option<Instant>,
    /// Line tokens, refilled one per `LINE_EVERY` up to `LINE_BURST`.
    tokens: u32,
    refilled: Instant,
    /// Changes since the latest line.
    changes: u64,
    /// Failed probes since the latest line about failing.
    failed_probes: u64,
    last_failing_line: Option<Instant>,
    /// The latest cause, for lines logged late.
    cause: Option<String>,
}

impl StoreHealth {
    /// A store believed healthy, whose changes are sent on `status` (one
    /// channel for both stores: whoever waits re-checks them all).
    pub(crate) fn new(status: watch::Sender<bool>) -> Self {
        StoreHealth {
            failing: AtomicBool::new(false),
            status,
            log: Mutex::new(LogState {
                reported_failing: false,
                failing_since: None,
                tokens: LINE_BURST,
                refilled: Instant::now(),
                changes: 0,
                failed_probes: 0,
                last_failing_line: None,
                cause: None,
            }),
        }
    }
}

/// What a line says besides the state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context<'a> {
    /// Which store: `main` or `per_second`.
    pub store: &'a str,
    /// The store's failure mode.
    pub on_failure: FailureMode,
    /// The breaker's state, by name.
    pub breaker: &'a str,
}

impl StoreHealth {
    /// Whether the store is believed to be failing.
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Why the store is failing (the latest cause known), or `None` while
    /// it is believed healthy.
    pub(crate) fn cause(&self) -> Option<String> {
        if !self.is_failing() {
            return None;
        }
        Some(
            self.lock()
                .cause
                .clone()
                .unwrap_or_else(|| "unknown".to_owned()),
        )
    }

    /// A receiver of every change (`true`: failing).
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.status.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        // Plain fields, each assignment complete: a poisoned lock is fine.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a failure now would be logged, so its cause is worth the
    /// trouble of explaining (a `PING` or two).
    pub(crate) fn wants_cause(&self) -> bool {
        let log = self.lock();
        !self.is_failing()
            || log
                .last_failing_line
                .is_none_or(|at| at.elapsed() >= RETRY_LINE_EVERY)
    }

    /// The store failed (the breaker opened, or a probe failed): a change
    /// if it was believed healthy, else a repeat (logged rarely).
    pub(crate) fn failed(&self, cause: Option<String>, context: Context<'_>) {
        let mut log = self.lock();
        if cause.is_some() {
            log.cause = cause;
        }
        if self.failing.swap(true, Ordering::AcqRel) {
            log.failed_probes += 1;
            let due = log
                .last_failing_line
                .is_none_or(|at| at.elapsed() >= RETRY_LINE_EVERY);
            if due && log.reported_failing {
                tracing::error!(
                    cause = log.cause.as_deref().unwrap_or("unknown"),
                    failed_probes = log.failed_probes,
                    failing_for_s = log.failing_since.map_or(0, |at| at.elapsed().as_secs()),
                    store = context.store,
                    on_failure = ?context.on_failure,
                    breaker = context.breaker,
                    "store still failing; deciding by the failure mode"
                );
                log.failed_probes = 0;
                log.last_failing_line = Some(Instant::now());
            }
            return;
        }
        log.failing_since = Some(Instant::now());
        log.changes += 1;
        self.status.send_replace(true);
        self.flush_locked(&mut log, context);
    }

    /// A probe succeeded with the breaker closed: a change if the store was
    /// believed failing.
    pub(crate) fn recovered(&self, context: Context<'_>) {
        let mut log = self.lock();
        if !self.failing.swap(false, Ordering::AcqRel) {
            return;
        }
        log.changes += 1;
        self.status.send_replace(false);
        self.flush_locked(&mut log, context);
    }

    /// Logs the state reached if the latest line said otherwise and the
    /// rate limit allows a line now (called on every probe tick).
    pub(crate) fn flush(&self, context: Context<'_>) {
        let mut log = self.lock();
        self.flush_locked(&mut log, context);
    }

    fn flush_locked(&self, log: &mut LogState, context: Context<'_>) {
        let failing = self.is_failing();
        if failing == log.reported_failing {
            return;
        }
        let now = Instant::now();
        while log.tokens < LINE_BURST && now.duration_since(log.refilled) >= LINE_EVERY {
            log.tokens += 1;
            log.refilled += LINE_EVERY;
        }
        if log.tokens == LINE_BURST {
            log.refilled = now;
        }
        if log.tokens == 0 {
            return;
        }
        log.tokens -= 1;
        // The change logged now is one of them.
        let changes_not_logged = log.changes.saturating_sub(1);
        log.changes = 0;
        log.reported_failing = failing;
        if failing {
            tracing::error!(
                cause = log.cause.as_deref().unwrap_or("unknown"),
                on_failure = ?context.on_failure,
                breaker = context.breaker,
                store = context.store,
                changes_not_logged,
                "store failing; deciding by the failure mode until it answers again"
            );
            log.failed_probes = 0;
            log.last_failing_line = Some(now);
        } else {
            tracing::info!(
                failing_for_ms = log
                    .failing_since
                    .map_or(0, |at| tollgate::clock::millis(at.elapsed())),
                breaker = context.breaker,
                store = context.store,
                changes_not_logged,
                "store recovered"
            );
        }
    }
}

/// Probes `app`'s store at start and then while it is failing, until
/// `shutdown` completes (see the [module docs](self)). [`crate::server::run`]
/// spawns it.
pub async fn watch_store(app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let every = app
        .stores()
        .map(|store| store.options().get_breaker_cooldown())
        .min()
        .unwrap_or_default()
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut first = true;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = app.probe_store(first) => {}
        }
        first = false;
    }
}
