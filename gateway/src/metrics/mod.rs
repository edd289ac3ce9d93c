//! Prometheus metrics, served as text on the admin listener's `/metrics` (never on the
//! exchange-facing port).
//!
//! # Layout
//! - this file: [`Metrics`], the process-wide set of every metric, and [`encode`].
//! - [`histogram`]: a lock-free histogram (the exporter's own takes a lock per
//!   observation).
//!
//! The exporter is `prometheus-client` (the Prometheus project's Rust client). The request
//! path never formats a label or looks one up in a map: each series is resolved once into
//! a slot of a flat table (indexed by action, decision and code) and from then on one
//! request costs a few relaxed atomic adds.

pub mod histogram;

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use keyguard_policy::{Action, Deny};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use histogram::Histogram;

type Labels<const N: usize> = [(&'static str, &'static str); N];

/// Seconds; from 50 µs (a refused request) to 10 s (an upstream timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Copy)]
struct NewHistogram;

impl MetricConstructor<Histogram> for NewHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(LATENCY_BUCKETS)
    }
}

/// Actions as metric labels; slot 0 is "not classified yet".
const ACTIONS: [Option<Action>; 5] = [
    None,
    Some(Action::Public),
    Some(Action::Read),
    Some(Action::Trade),
    Some(Action::Withdraw),
];
const DECISIONS: [&str; 3] = ["allow", "deny", "would_deny"];

fn action_slot(action: Option<Action>) -> usize {
    match action {
        None => 0,
        Some(Action::Public) => 1,
        Some(Action::Read) => 2,
        Some(Action::Trade) => 3,
        Some(Action::Withdraw) => 4,
    }
}

fn code_slot(code: Option<Deny>) -> usize {
    // `Deny::ALL` is short (under 50); a linear scan of `Copy` values is a few ns and
    // needs no second table to keep in sync with the enum.
    code.and_then(|d| Deny::ALL.iter().position(|x| *x == d))
        .map_or(0, |i| i + 1)
}

/// Every metric of the process. Reached through [`metrics()`].
pub struct Metrics {
    registry: Registry,
    dialect: OnceLock<&'static str>,
    requests: Family<Labels<4>, Counter>,
    request_slots: Box<[OnceLock<Counter>]>,
    request_duration: Family<Labels<2>, Histogram, NewHistogram>,
    duration_slots: Box<[OnceLock<Histogram>]>,
    /// Time from the request's forwarding to the upstream's response headers.
    pub upstream_duration: Histogram,
    /// The upstream could not be reached (connect failed or refused).
    pub upstream_connect_errors: Counter,
    /// The upstream did not answer in time.
    pub upstream_timeouts: Counter,
    /// The upstream failed after the request was sent (reset, garbage).
    pub upstream_other_errors: Counter,
    /// One group commit of the store writer.
    pub store_commit_duration: Histogram,
    /// Store commits that failed.
    pub store_commit_errors: Counter,
    /// TLS handshakes on the exchange-facing listener that failed (bad hello, no common
    /// protocol, unknown certificate authority at the client) or did not finish within
    /// `server.header_read_timeout_ms`.
    pub tls_handshake_failures: Counter,
    /// Nonce-dialect requests refused because their nonce's journal line could not be
    /// written in time (a failing or stalled data disk).
    pub nonce_journal_failures: Counter,
    /// One Redis call of the distributed store (the per-request script included).
    pub redis_call_duration: Histogram,
    /// Redis calls that failed or timed out (the request failed closed).
    pub redis_call_errors: Counter,
    /// One `write(2)` of a batch of audit lines (and the `fdatasync`s, separately).
    pub audit_write_duration: Histogram,
    /// One `fdatasync` of the audit log.
    pub audit_fsync_duration: Histogram,
    /// Lines waiting for the audit writer.
    pub audit_queue_lines: Gauge,
    /// Failed audit writes (each retried until it succeeds).
    pub audit_write_errors: Counter,
    /// Failed audit `fdatasync`s.
    pub audit_fsync_errors: Counter,
    /// Lines dropped because the queue was full (the disk stalled or failed for long).
    pub audit_dropped_lines: Counter,
    /// Requests answered before their line was written (the writer was slower than
    /// `audit.write_timeout`).
    pub audit_ack_timeouts: Counter,
    /// Pre-authentication refusals counted in a summary line instead of their own.
    pub audit_summarized: Counter,
    /// Audit files rotated.
    pub audit_rotations: Counter,
    /// 1 while the audit log takes lines, 0 while trades and withdrawals are refused for it.
    pub audit_available: Gauge,
    /// Entries over all rate limiters (after the last sweep).
    pub limiter_entries: Gauge,
    /// Entries in the anomaly tables (after the last sweep).
    pub anomaly_entries: Gauge,
    /// Entries in the velocity windows (after the last sweep).
    pub velocity_entries: Gauge,
    /// Keys in the in-memory key snapshot.
    pub key_cache_keys: Gauge,
    /// Config reloads applied (wired by the reload code).
    pub reload_ok: Counter,
    /// Config reloads refused (invalid file; the old config stays).
    pub reload_failed: Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The Prometheus text exposition of every metric (OpenMetrics text, `# EOF` included).
pub fn encode() -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &metrics().registry);
    out
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("keyguard");
        let requests = Family::<Labels<4>, Counter>::default();
        registry.register(
            "requests",
            "Requests by dialect, action, decision and deny code (code \"none\" when allowed)",
            requests.clone(),
        );
        let request_duration = Family::new_with_constructor(NewHistogram);
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response headers, by dialect and action",
            request_duration.clone(),
        );
        let hist = || Histogram::new(LATENCY_BUCKETS);
        let upstream_duration = hist();
        registry.register(
            "upstream_duration_seconds",
            "Time the upstream took to answer a forwarded request",
            upstream_duration.clone(),
        );
        let upstream_errors = Family::<Labels<1>, Counter>::default();
        registry.register(
            "upstream_errors",
            "Forwarded requests the upstream did not answer, by kind (connect, timeout, other)",
            upstream_errors.clone(),
        );
        let store_commit_duration = hist();
        registry.register(
            "store_commit_duration_seconds",
            "One group commit of the SQLite store writer",
            store_commit_duration.clone(),
        );
        let store_commit_errors = Counter::default();
        registry.register(
            "store_commit_errors",
            "Store commits that failed",
            store_commit_errors.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes on the exchange-facing listener that failed or timed out",
            tls_handshake_failures.clone(),
        );
        let nonce_journal_failures = Counter::default();
        registry.register(
            "nonce_journal_failures",
            "Requests refused because their nonce could not be journaled within audit.write_timeout",
            nonce_journal_failures.clone(),
        );
        let redis_call_duration = hist();
        registry.register(
            "redis_call_duration_seconds",
            "One call to Redis in distributed mode, under its deadline",
            redis_call_duration.clone(),
        );
        let redis_call_errors = Counter::default();
        registry.register(
            "redis_call_errors",
            "Redis calls that failed or missed their deadline",
            redis_call_errors.clone(),
        );
        let audit_write_duration = hist();
        registry.register(
            "audit_write_duration_seconds",
            "One write of a batch of audit lines",
            audit_write_duration.clone(),
        );
        let audit_fsync_duration = hist();
        registry.register(
            "audit_fsync_duration_seconds",
            "One fdatasync of the audit log",
            audit_fsync_duration.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let audit_queue_lines = gauge(
            &mut registry,
            "audit_queue_lines",
            "Audit lines waiting for the writer",
        );
        let audit_write_errors = counter(
            &mut registry,
            "audit_write_errors",
            "Failed audit writes (disk full, I/O error); the lines are retried",
        );
        let audit_fsync_errors = counter(
            &mut registry,
            "audit_fsync_errors",
            "Failed audit fdatasyncs",
        );
        let audit_dropped_lines = counter(
            &mut registry,
            "audit_dropped_lines",
            "Audit lines dropped because the writer's queue was full",
        );
        let audit_ack_timeouts = counter(
            &mut registry,
            "audit_ack_timeouts",
            "Requests answered before their audit line was written (audit.write_timeout)",
        );
        let audit_summarized = counter(
            &mut registry,
            "audit_summarized",
            "Refusals before authentication counted in a summary line instead of their own",
        );
        let audit_rotations = counter(&mut registry, "audit_rotations", "Audit files rotated");
        let audit_available = gauge(
            &mut registry,
            "audit_available",
            "1 while the audit log takes lines; 0 while trades and withdrawals are refused",
        );
        audit_available.set(1);
        let limiter_entries = gauge(
            &mut registry,
            "limiter_entries",
            "Entries over all rate limiters",
        );
        let anomaly_entries = gauge(
            &mut registry,
            "anomaly_entries",
            "Entries in the anomaly tables",
        );
        let velocity_entries = gauge(
            &mut registry,
            "velocity_entries",
            "Entries in the velocity windows",
        );
        let key_cache_keys = gauge(
            &mut registry,
            "key_cache_keys",
            "Keys in the in-memory key snapshot",
        );
        let reloads = Family::<Labels<1>, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads by result (ok, failed)",
            reloads.clone(),
        );
        Metrics {
            dialect: OnceLock::new(),
            request_slots: (0..ACTIONS.len() * DECISIONS.len() * (Deny::ALL.len() + 1))
                .map(|_| OnceLock::new())
                .collect(),
            duration_slots: (0..ACTIONS.len()).map(|_| OnceLock::new()).collect(),
            upstream_connect_errors: upstream_errors.get_or_create_owned(&[("kind", "connect")]),
            upstream_timeouts: upstream_errors.get_or_create_owned(&[("kind", "timeout")]),
            upstream_other_errors: upstream_errors.get_or_create_owned(&[("kind", "other")]),
            reload_ok: reloads.get_or_create_owned(&[("result", "ok")]),
            reload_failed: reloads.get_or_create_owned(&[("result", "failed")]),
            registry,
            requests,
            request_duration,
            upstream_duration,
            store_commit_duration,
            store_commit_errors,
            tls_handshake_failures,
            nonce_journal_failures,
            redis_call_duration,
            redis_call_errors,
            audit_write_duration,
            audit_fsync_duration,
            audit_queue_lines,
            audit_write_errors,
            audit_fsync_errors,
            audit_dropped_lines,
            audit_ack_timeouts,
            audit_summarized,
            audit_rotations,
            audit_available,
            limiter_entries,
            anomaly_entries,
            velocity_entries,
            key_cache_keys,
        }
    }

    /// Names the process's dialect in the request metrics' `dialect` label; the first call
    /// wins (a process serves one dialect).
    pub fn set_dialect(&self, dialect: &'static str) {
        let _ = self.dialect.set(dialect);
    }

    fn dialect(&self) -> &'static str {
        self.dialect.get().copied().unwrap_or("unknown")
    }

    /// Counts one answered request and its latency.
    pub fn request(
        &self,
        action: Option<Action>,
        decision: &'static str,
        code: Option<Deny>,
        latency: Duration,
    ) {
        let a = action_slot(action);
        let d = DECISIONS.iter().position(|x| *x == decision).unwrap_or(1);
        let c = code_slot(code);
        let slot = (a * DECISIONS.len() + d) * (Deny::ALL.len() + 1) + c;
        self.request_slots[slot]
            .get_or_init(|| {
                self.requests.get_or_create_owned(&[
                    ("dialect", self.dialect()),
                    ("action", ACTIONS[a].map_or("none", Action::as_str)),
                    ("decision", DECISIONS[d]),
                    ("code", code.map_or("none", Deny::code)),
                ])
            })
            .inc();
        self.duration_slots[a]
            .get_or_init(|| {
                self.request_duration.get_or_create_owned(&[
                    ("dialect", self.dialect()),
                    ("action", ACTIONS[a].map_or("none", Action::as_str)),
                ])
            })
            .observe(latency);
    }

    /// Counts an upstream failure by its deny code (connect, timeout, other).
    pub fn upstream_error(&self, deny: Deny, sent: bool) {
        match (deny, sent) {
            (Deny::UpstreamTimeout, _) => self.upstream_timeouts.inc(),
            (_, false) => self.upstream_connect_errors.inc(),
            _ => self.upstream_other_errors.inc(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_has_its_own_slot_and_the_text_names_it() {
        let m = metrics();
        m.set_dialect("zaif");
        m.request(
            Some(Action::Withdraw),
            "deny",
            Some(Deny::AuditUnavailable),
            Duration::from_micros(120),
        );
        m.request(Some(Action::Read), "allow", None, Duration::from_millis(3));
        m.request(Some(Action::Read), "allow", None, Duration::from_millis(3));
        let text = encode();
        assert!(
            text.contains(
                "keyguard_requests_total{dialect=\"zaif\",action=\"withdraw\",decision=\"deny\",code=\"audit_unavailable\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "keyguard_requests_total{dialect=\"zaif\",action=\"read\",decision=\"allow\",code=\"none\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "keyguard_request_duration_seconds_bucket{le=\"0.005\",dialect=\"zaif\",action=\"read\"} 2"
            ) || text.contains(
                "keyguard_request_duration_seconds_bucket{dialect=\"zaif\",action=\"read\",le=\"0.005\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("keyguard_audit_available 1"), "{text}");
        assert!(
            text.contains("keyguard_config_reloads_total{result=\"failed\"} 0"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
