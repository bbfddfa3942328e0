//! `/metrics` in the Prometheus text format (version 0.0.4): request counts by endpoint and status and
//! latency histograms kept here, plus the scheduler's token counters, throughput, queue, slots and KV use.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use quire_engine::scheduler::SchedulerStats;

/// Upper bounds (seconds) of the request latency buckets: from a health check to a long generation.
const LATENCY_BUCKETS: &[f64] =
    &[0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
/// Upper bounds (seconds) of the time-to-first-token buckets.
const TTFT_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Count per bucket (not cumulative; made cumulative when rendered), plus one for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len() + 1];
        }
        let i = bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (i, b) in bounds.iter().enumerate() {
            cum += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
struct Counters {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    ttft: Histogram,
}

/// Request counters shared by all connections.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
}

/// What `/metrics` shows besides the request counters.
pub struct Snapshot<'a> {
    pub model_name: &'a str,
    pub loaded: bool,
    /// The scheduler's numbers (a copy: rendering holds no scheduler lock).
    pub scheduler: Option<SchedulerStats>,
    pub queue_capacity: usize,
    pub open_connections: usize,
    /// Requests of open batch jobs without a result yet (`None`: no batch API).
    pub batch_pending: Option<u64>,
}

impl Metrics {
    /// Count one finished request (status 499 = client went away mid-stream).
    pub fn record_request(&self, endpoint: &'static str, status: u16, secs: f64, ttft_secs: Option<f64>) {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *c.requests.entry((endpoint, status)).or_insert(0) += 1;
        c.latency.entry(endpoint).or_default().observe(LATENCY_BUCKETS, secs);
        if let Some(t) = ttft_secs {
            c.ttft.observe(TTFT_BUCKETS, t);
        }
    }

    /// The whole exposition text.
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut out = String::with_capacity(4096);
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let model = escape_label(snap.model_name);

        help(&mut out, "quire_model_loaded", "gauge", "1 once the model is loaded and requests are served");
        let _ = writeln!(out, "quire_model_loaded{{model=\"{model}\"}} {}", u8::from(snap.loaded));

        help(
            &mut out,
            "quire_requests_total",
            "counter",
            "HTTP requests by endpoint and status (499: client closed)",
        );
        for ((endpoint, status), n) in &c.requests {
            let _ = writeln!(out, "quire_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
        }
        help(
            &mut out,
            "quire_request_duration_seconds",
            "histogram",
            "time from request to the end of its response",
        );
        for (endpoint, h) in &c.latency {
            h.render(
                &mut out,
                "quire_request_duration_seconds",
                &format!("endpoint=\"{endpoint}\""),
                LATENCY_BUCKETS,
            );
        }
        help(
            &mut out,
            "quire_time_to_first_token_seconds",
            "histogram",
            "time from request to its first generated text",
        );
        c.ttft.render(&mut out, "quire_time_to_first_token_seconds", "", TTFT_BUCKETS);

        help(&mut out, "quire_open_connections", "gauge", "open HTTP connections");
        let _ = writeln!(out, "quire_open_connections {}", snap.open_connections);
        help(&mut out, "quire_queue_capacity", "gauge", "requests that may wait for a slot (--queue)");
        let _ = writeln!(out, "quire_queue_capacity {}", snap.queue_capacity);

        let s = snap.scheduler.clone().unwrap_or_default();
        let gauges: [(&str, &str, &str, String); 15] = [
            (
                "quire_prompt_tokens_total",
                "counter",
                "prompt tokens processed",
                s.prompt_tokens_total.to_string(),
            ),
            (
                "quire_generated_tokens_total",
                "counter",
                "tokens generated",
                s.generated_tokens_total.to_string(),
            ),
            (
                "quire_spec_drafted_tokens_total",
                "counter",
                "speculative decoding: drafted tokens verified (prompt lookup, predicted outputs)",
                s.drafted_tokens_total.to_string(),
            ),
            (
                "quire_spec_accepted_tokens_total",
                "counter",
                "speculative decoding: drafted tokens accepted (each one a decode step saved)",
                s.accepted_tokens_total.to_string(),
            ),
            (
                "quire_prefill_tokens_per_second",
                "gauge",
                "current prompt processing rate",
                fmt_f64(s.prefill_tps),
            ),
            (
                "quire_decode_tokens_per_second",
                "gauge",
                "current aggregate decode rate",
                fmt_f64(s.decode_tps),
            ),
            ("quire_queue_depth", "gauge", "requests waiting for a slot", s.queued.to_string()),
            ("quire_slots_active", "gauge", "slots generating", s.active.to_string()),
            ("quire_slots_active_batch", "gauge", "slots generating for batch jobs", s.active_batch.to_string()),
            (
                "quire_queue_depth_batch",
                "gauge",
                "batch requests waiting for a slot (paused ones included)",
                s.queued_batch.to_string(),
            ),
            (
                "quire_batch_preemptions_total",
                "counter",
                "times a batch request gave its slot to an interactive one",
                s.preemptions_total.to_string(),
            ),
            ("quire_slots_total", "gauge", "slots (--parallel)", s.n_slots.to_string()),
            (
                "quire_kv_cache_used_tokens",
                "gauge",
                "KV cache positions in use over all slots",
                s.kv_used_tokens.to_string(),
            ),
            (
                "quire_kv_cache_capacity_tokens",
                "gauge",
                "KV cache positions over all slots",
                s.kv_capacity_tokens.to_string(),
            ),
            (
                "quire_weights_prepacking",
                "gauge",
                "1 while the weights are copied into the kernels' layout after load (requests run meanwhile, slower); 0 before the model is loaded",
                u8::from(s.weights_prepacking).to_string(),
            ),
        ];
        for (name, kind, text, value) in gauges {
            help(&mut out, name, kind, text);
            let _ = writeln!(out, "{name} {value}");
        }
        let ratio = if s.kv_capacity_tokens == 0 {
            0.0
        } else {
            s.kv_used_tokens as f64 / s.kv_capacity_tokens as f64
        };
        help(&mut out, "quire_kv_cache_usage_ratio", "gauge", "fraction of the KV cache in use");
        let _ = writeln!(out, "quire_kv_cache_usage_ratio {}", fmt_f64(ratio));
        if let Some(n) = snap.batch_pending {
            help(
                &mut out,
                "quire_batch_requests_pending",
                "gauge",
                "requests of open batch jobs not yet done",
            );
            let _ = writeln!(out, "quire_batch_requests_pending {n}");
        }
        out
    }
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Prometheus floats: finite values as Rust prints them; NaN/inf spelled the Prometheus way.
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.record_request("/v1/chat/completions", 200, 0.3, Some(0.07));
        m.record_request("/v1/chat/completions", 200, 42.0, None);
        m.record_request("/health", 503, 0.001, None);
        let text = m.render(&Snapshot {
            model_name: "m\"x",
            loaded: true,
            scheduler: None,
            queue_capacity: 16,
            open_connections: 1,
            batch_pending: Some(7),
        });
        assert!(text.contains("quire_model_loaded{model=\"m\\\"x\"} 1"));
        assert!(text.contains("quire_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 2"));
        assert!(text.contains("quire_requests_total{endpoint=\"/health\",status=\"503\"} 1"));
        assert!(text.contains(
            "quire_request_duration_seconds_bucket{endpoint=\"/v1/chat/completions\",le=\"0.5\"} 1"
        ));
        assert!(text.contains(
            "quire_request_duration_seconds_bucket{endpoint=\"/v1/chat/completions\",le=\"60\"} 2"
        ));
        assert!(text.contains("quire_request_duration_seconds_count{endpoint=\"/v1/chat/completions\"} 2"));
        assert!(text.contains("quire_time_to_first_token_seconds_bucket{le=\"0.1\"} 1"));
        assert!(text.contains("quire_slots_active 0"));
        assert!(text.contains("quire_batch_requests_pending 7"));
        assert!(text.contains("quire_batch_preemptions_total 0"));
        assert!(text.contains("quire_queue_capacity 16"));
        // Every sample line parses as `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
        }
    }
}
