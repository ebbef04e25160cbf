//! Counters and histograms for `GET /metrics`, in the Prometheus text format
//! (version 0.0.4). Nothing here grows with traffic: label sets are bounded by the
//! backends, kinds and statuses airlock knows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::store::{ExecutionKind, RecordStatus};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS_S: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS_S.len()],
    count: u64,
    sum_s: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS_S.iter().enumerate() {
            if s <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum_s += s;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS_S.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}", self.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_s);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    executions: BTreeMap<(String, &'static str, &'static str), u64>,
    latency: BTreeMap<(String, &'static str), Histogram>,
    queue_wait: Histogram,
    rejected: BTreeMap<&'static str, u64>,
    sandboxes_created: BTreeMap<String, u64>,
    sandboxes_reaped: BTreeMap<&'static str, u64>,
    audit_write_failures: u64,
    audit_pruned: u64,
    /// Exponentially weighted mean of execution latency, for `Retry-After`.
    mean_latency_s: f64,
}

/// Point-in-time values, read by the service when the metrics are rendered.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Live sandboxes (sessions and one-shot runs) by backend.
    pub live_sandboxes: BTreeMap<String, u64>,
    /// Sessions by status (`idle`, `running`, `stopped`).
    pub sessions: BTreeMap<String, u64>,
    /// Backend operations running now.
    pub running: u64,
    /// Requests waiting for a slot.
    pub queue_depth: u64,
    /// The cap on running operations.
    pub max_running: u64,
    /// The cap on live sessions.
    pub max_sandboxes: u64,
    /// Seconds since the service started.
    pub uptime_s: f64,
    /// Audit records waiting in memory because the store refused them.
    pub audit_pending: u64,
    /// Whether the audit log cannot be written now (new executions are refused).
    pub audit_degraded: bool,
}

/// The service's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn backend_label(b: Option<airlock_core::BackendKind>) -> String {
    b.map(|b| b.as_str().to_string()).unwrap_or_else(|| "none".into())
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a finished execution and its latency from acceptance to result.
    pub fn execution(
        &self,
        backend: Option<airlock_core::BackendKind>,
        kind: ExecutionKind,
        status: RecordStatus,
        latency: Duration,
    ) {
        let mut m = self.lock();
        let b = backend_label(backend);
        *m.executions.entry((b.clone(), kind.as_str(), status.as_str())).or_default() += 1;
        m.latency.entry((b, kind.as_str())).or_default().observe(latency);
        let s = latency.as_secs_f64();
        m.mean_latency_s = if m.mean_latency_s == 0.0 { s } else { 0.9 * m.mean_latency_s + 0.1 * s };
    }

    /// Records how long an admitted request waited in the queue.
    pub fn queue_wait(&self, d: Duration) {
        self.lock().queue_wait.observe(d);
    }

    /// Counts a refused request (`queue_full`, `queue_timeout`, `quota`, `overloaded`).
    pub fn rejected(&self, reason: &'static str) {
        *self.lock().rejected.entry(reason).or_default() += 1;
    }

    /// Counts a session created.
    pub fn sandbox_created(&self, backend: airlock_core::BackendKind) {
        *self.lock().sandboxes_created.entry(backend.as_str().to_string()).or_default() += 1;
    }

    /// Counts a session ended (`idle`, `lifetime`, `deleted`, `shutdown`).
    pub fn sandbox_ended(&self, why: &'static str) {
        *self.lock().sandboxes_reaped.entry(why).or_default() += 1;
    }

    /// Counts a write the audit store refused.
    pub fn audit_write_failed(&self) {
        self.lock().audit_write_failures += 1;
    }

    /// Counts execution records deleted by retention.
    pub fn pruned(&self, executions: u64) {
        self.lock().audit_pruned += executions;
    }

    /// Seconds a refused client should wait before retrying: about one execution.
    pub fn retry_after_s(&self) -> u64 {
        let mean = self.lock().mean_latency_s;
        (mean.ceil() as u64).clamp(1, 60)
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self, g: &Gauges) -> String {
        let m = self.lock();
        let mut out = String::with_capacity(4096);
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };

        head(&mut out, "airlock_executions_total", "counter", "Executions finished, by backend, kind and status.");
        for ((b, k, s), n) in &m.executions {
            let _ = writeln!(out, "airlock_executions_total{{backend=\"{b}\",kind=\"{k}\",status=\"{s}\"}} {n}");
        }
        head(
            &mut out,
            "airlock_execution_duration_seconds",
            "histogram",
            "Time from accepting an execution to its result (queueing, sandbox creation for one-shots, and the run).",
        );
        for ((b, k), h) in &m.latency {
            h.render(&mut out, "airlock_execution_duration_seconds", &format!("backend=\"{b}\",kind=\"{k}\""));
        }
        head(&mut out, "airlock_queue_wait_seconds", "histogram", "Time admitted requests waited for a slot.");
        m.queue_wait.render(&mut out, "airlock_queue_wait_seconds", "");
        head(&mut out, "airlock_rejected_total", "counter", "Requests refused by admission control, by reason.");
        for (r, n) in &m.rejected {
            let _ = writeln!(out, "airlock_rejected_total{{reason=\"{r}\"}} {n}");
        }
        head(&mut out, "airlock_sandboxes_created_total", "counter", "Sessions created, by backend.");
        for (b, n) in &m.sandboxes_created {
            let _ = writeln!(out, "airlock_sandboxes_created_total{{backend=\"{b}\"}} {n}");
        }
        head(&mut out, "airlock_sandboxes_ended_total", "counter", "Sessions ended, by cause.");
        for (r, n) in &m.sandboxes_reaped {
            let _ = writeln!(out, "airlock_sandboxes_ended_total{{cause=\"{r}\"}} {n}");
        }
        head(&mut out, "airlock_live_sandboxes", "gauge", "Live sandboxes (sessions and one-shot runs), by backend.");
        for (b, n) in &g.live_sandboxes {
            let _ = writeln!(out, "airlock_live_sandboxes{{backend=\"{b}\"}} {n}");
        }
        head(&mut out, "airlock_sessions", "gauge", "Sessions by status.");
        for (s, n) in &g.sessions {
            let _ = writeln!(out, "airlock_sessions{{status=\"{s}\"}} {n}");
        }
        head(&mut out, "airlock_running", "gauge", "Backend operations (executions, sandbox creations) running now.");
        let _ = writeln!(out, "airlock_running {}", g.running);
        head(&mut out, "airlock_max_running", "gauge", "The cap on backend operations running at once.");
        let _ = writeln!(out, "airlock_max_running {}", g.max_running);
        head(&mut out, "airlock_max_sandboxes", "gauge", "The cap on live sessions.");
        let _ = writeln!(out, "airlock_max_sandboxes {}", g.max_sandboxes);
        head(&mut out, "airlock_queue_depth", "gauge", "Requests waiting for a slot now.");
        let _ = writeln!(out, "airlock_queue_depth {}", g.queue_depth);
        head(&mut out, "airlock_audit_write_failures_total", "counter", "Writes the audit store refused.");
        let _ = writeln!(out, "airlock_audit_write_failures_total {}", m.audit_write_failures);
        head(
            &mut out,
            "airlock_audit_pending",
            "gauge",
            "Audit records waiting in memory to be written (the store refused them).",
        );
        let _ = writeln!(out, "airlock_audit_pending {}", g.audit_pending);
        head(
            &mut out,
            "airlock_audit_degraded",
            "gauge",
            "1 while the audit log cannot be written (new runs refused).",
        );
        let _ = writeln!(out, "airlock_audit_degraded {}", u8::from(g.audit_degraded));
        head(&mut out, "airlock_audit_pruned_total", "counter", "Execution records deleted by retention.");
        let _ = writeln!(out, "airlock_audit_pruned_total {}", m.audit_pruned);
        head(&mut out, "airlock_uptime_seconds", "gauge", "Seconds since the service started.");
        let _ = writeln!(out, "airlock_uptime_seconds {:.3}", g.uptime_s);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        let p = Some(airlock_core::BackendKind::Process);
        m.execution(p, ExecutionKind::Cell, RecordStatus::Ok, Duration::from_millis(30));
        m.execution(p, ExecutionKind::Cell, RecordStatus::Ok, Duration::from_millis(3));
        m.rejected("queue_timeout");
        let text = m.render(&Gauges { running: 1, ..Default::default() });
        assert!(text.contains("airlock_executions_total{backend=\"process\",kind=\"cell\",status=\"ok\"} 2"), "{text}");
        assert!(
            text.contains(
                "airlock_execution_duration_seconds_bucket{backend=\"process\",kind=\"cell\",le=\"0.005\"} 1"
            )
        );
        assert!(
            text.contains("airlock_execution_duration_seconds_bucket{backend=\"process\",kind=\"cell\",le=\"0.05\"} 2")
        );
        assert!(text.contains("airlock_execution_duration_seconds_count{backend=\"process\",kind=\"cell\"} 2"));
        assert!(text.contains("airlock_rejected_total{reason=\"queue_timeout\"} 1"));
        assert!(text.contains("airlock_running 1"));
        assert_eq!(m.retry_after_s(), 1);
    }
}
