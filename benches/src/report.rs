//! Latency statistics and the report, in the layout of etcd's `benchmark` tool.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles reported, as etcd's tool does.
pub const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// Buckets in the text histogram.
const HISTOGRAM_BUCKETS: usize = 10;
/// Width of the longest bar in the text histogram.
const BAR_WIDTH: u64 = 40;

/// Failures of one gRPC code.
#[derive(Debug, Clone)]
pub struct ErrorCount {
    pub count: u64,
    /// The message of the first failure with this code.
    pub example: String,
}

/// What one client (or, merged, the whole run) observed.
#[derive(Default)]
pub struct Stats {
    /// Latencies of the successful requests in nanoseconds, kept raw (8 bytes per request) and
    /// put into a histogram once, at the end ([`Stats::histogram`]). Recording into one
    /// histogram per client (256 of ~150 KB each) missed the cache on nearly every request: ~6%
    /// of the tool's CPU, taken from the servers it measures.
    latencies: Vec<u64>,
    pub ok: u64,
    pub errors: BTreeMap<String, ErrorCount>,
}

impl Stats {
    pub fn record_ok(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.latencies.push(ns);
        self.ok += 1;
    }

    /// The latencies recorded, as an auto-resizing histogram with three significant figures.
    pub fn histogram(&self) -> anyhow::Result<Histogram<u64>> {
        let mut h = Histogram::new(3)?;
        for &ns in &self.latencies {
            // `record` grows the histogram; `saturating_record` would clamp instead.
            if h.record(ns).is_err() {
                h.saturating_record(ns);
            }
        }
        Ok(h)
    }

    pub fn record_err(&mut self, status: &tonic::Status) {
        let code = format!("{:?}", status.code());
        self.errors
            .entry(code)
            .and_modify(|e| e.count += 1)
            .or_insert_with(|| ErrorCount {
                count: 1,
                example: status.message().to_string(),
            });
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().map(|e| e.count).sum()
    }

    pub fn merge(&mut self, mut other: Stats) {
        self.latencies.append(&mut other.latencies);
        self.ok += other.ok;
        for (code, e) in other.errors {
            self.errors
                .entry(code)
                .and_modify(|mine| mine.count += e.count)
                .or_insert(e);
        }
    }
}

/// The machine-readable result (`--json`): one flat object so a shell script can pick fields.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub op: String,
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_codes: BTreeMap<String, u64>,
    pub total_s: f64,
    pub rps: f64,
    pub fastest_ms: f64,
    pub slowest_ms: f64,
    pub mean_ms: f64,
    pub stddev_ms: f64,
    pub p10_ms: f64,
    pub p25_ms: f64,
    pub p50_ms: f64,
    pub p75_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    /// Server memory per watcher (watch-latency with --rss-pids).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_watcher: Option<u64>,
}

fn ns_to_ms(ns: f64) -> f64 {
    ns / 1e6
}

/// Run description handed to [`summarize`].
pub struct RunInfo {
    pub op: String,
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub requests: u64,
    pub elapsed: Duration,
}

/// `h`: the histogram of `stats`'s latencies ([`Stats::histogram`]).
pub fn summarize(info: RunInfo, stats: &Stats, h: &Histogram<u64>) -> Summary {
    let has = !h.is_empty();
    let q = |p: f64| -> f64 {
        if has {
            ns_to_ms(h.value_at_quantile(p / 100.0) as f64)
        } else {
            0.0
        }
    };
    let secs = info.elapsed.as_secs_f64();
    Summary {
        op: info.op,
        endpoints: info.endpoints,
        conns: info.conns,
        clients: info.clients,
        requests: info.requests,
        ok: stats.ok,
        errors: stats.error_total(),
        error_codes: stats
            .errors
            .iter()
            .map(|(k, v)| (k.clone(), v.count))
            .collect(),
        total_s: secs,
        // As etcd: successful requests per second of wall time.
        rps: if secs > 0.0 {
            stats.ok as f64 / secs
        } else {
            0.0
        },
        fastest_ms: if has { ns_to_ms(h.min() as f64) } else { 0.0 },
        slowest_ms: if has { ns_to_ms(h.max() as f64) } else { 0.0 },
        mean_ms: if has { ns_to_ms(h.mean()) } else { 0.0 },
        stddev_ms: if has { ns_to_ms(h.stdev()) } else { 0.0 },
        p10_ms: q(10.0),
        p25_ms: q(25.0),
        p50_ms: q(50.0),
        p75_ms: q(75.0),
        p90_ms: q(90.0),
        p95_ms: q(95.0),
        p99_ms: q(99.0),
        p99_9_ms: q(99.9),
        bytes_per_watcher: None,
    }
}

impl Summary {
    /// The percentile values in the order of [`PERCENTILES`].
    pub fn percentiles_ms(&self) -> [f64; 8] {
        [
            self.p10_ms,
            self.p25_ms,
            self.p50_ms,
            self.p75_ms,
            self.p90_ms,
            self.p95_ms,
            self.p99_ms,
            self.p99_9_ms,
        ]
    }
}

/// `10` -> `"10%"`, `99.9` -> `"99.9%"`.
pub fn percentile_label(p: f64) -> String {
    format!("{p}%")
}

/// Milliseconds as etcd prints latencies: seconds, here with microsecond precision.
pub fn fmt_secs(ms: f64) -> String {
    format!("{:.6}", ms / 1e3)
}

/// Splits recorded `(value, count)` pairs into `n` equal-width buckets between `min` and `max`;
/// returns `(upper bound, count)` for `n + 1` marks like etcd (the first mark is `min` itself).
pub fn buckets(recorded: &[(u64, u64)], min: u64, max: u64, n: usize) -> Vec<(u64, u64)> {
    let n = n.max(1);
    let span = max.saturating_sub(min);
    let marks: Vec<u64> = (0..=n)
        .map(|i| min + (u128::from(span) * i as u128 / n as u128) as u64)
        .collect();
    let mut counts = vec![0u64; marks.len()];
    for &(v, c) in recorded {
        let idx = marks.partition_point(|&m| m < v).min(marks.len() - 1);
        counts[idx] += c;
    }
    marks.into_iter().zip(counts).collect()
}

/// The human-readable report.
pub fn render_text(s: &Summary, stats: &Stats, h: &Histogram<u64>) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "\nSummary:");
    let _ = writeln!(out, "  Total:\t{:.4} secs.", s.total_s);
    let _ = writeln!(out, "  Slowest:\t{} secs.", fmt_secs(s.slowest_ms));
    let _ = writeln!(out, "  Fastest:\t{} secs.", fmt_secs(s.fastest_ms));
    let _ = writeln!(out, "  Average:\t{} secs.", fmt_secs(s.mean_ms));
    let _ = writeln!(out, "  Stddev:\t{} secs.", fmt_secs(s.stddev_ms));
    let _ = writeln!(out, "  Requests/sec:\t{:.4}", s.rps);
    if let Some(b) = s.bytes_per_watcher {
        let _ = writeln!(out, "  Server memory per watcher:\t{b} bytes");
    }

    if !h.is_empty() {
        let recorded: Vec<(u64, u64)> = h
            .iter_recorded()
            .map(|v| {
                (
                    h.lowest_equivalent(v.value_iterated_to()),
                    v.count_at_value(),
                )
            })
            .collect();
        let bs = buckets(&recorded, h.min(), h.max(), HISTOGRAM_BUCKETS);
        let most = bs.iter().map(|b| b.1).max().unwrap_or(0).max(1);
        let _ = writeln!(out, "\nResponse time histogram:");
        for (mark, count) in bs {
            let bar = "∎".repeat((count * BAR_WIDTH / most) as usize);
            let _ = writeln!(
                out,
                "  {} [{}]\t|{}",
                fmt_secs(ns_to_ms(mark as f64)),
                count,
                bar
            );
        }
        let _ = writeln!(out, "\nLatency distribution:");
        for (p, v) in PERCENTILES.iter().zip(s.percentiles_ms()) {
            let _ = writeln!(out, "  {} in {} secs.", percentile_label(*p), fmt_secs(v));
        }
    }

    if !stats.errors.is_empty() {
        let _ = writeln!(out, "\nError distribution:");
        for (code, e) in &stats.errors {
            let _ = writeln!(out, "  [{}]\t{}: {}", e.count, code, e.example);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels() {
        let labels: Vec<String> = PERCENTILES.iter().map(|p| percentile_label(*p)).collect();
        assert_eq!(
            labels,
            vec!["10%", "25%", "50%", "75%", "90%", "95%", "99%", "99.9%"]
        );
    }

    #[test]
    fn seconds_formatting() {
        assert_eq!(fmt_secs(1.0), "0.001000");
        assert_eq!(fmt_secs(0.3704), "0.000370");
        assert_eq!(fmt_secs(1234.5), "1.234500");
    }

    #[test]
    fn bucketing_is_inclusive_of_upper_marks() {
        // Marks 0, 10, 20, ..., 100.
        let rec = [(0, 1), (5, 2), (10, 3), (11, 1), (100, 4)];
        let b = buckets(&rec, 0, 100, 10);
        assert_eq!(b.len(), 11);
        assert_eq!(b[0], (0, 1));
        assert_eq!(b[1], (10, 5));
        assert_eq!(b[2], (20, 1));
        assert_eq!(b[10], (100, 4));
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 11);
    }

    #[test]
    fn single_value_buckets() {
        let b = buckets(&[(7, 3)], 7, 7, 10);
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 3);
        assert_eq!(b[0], (7, 3));
    }

    fn sample_stats() -> Stats {
        let mut s = Stats::default();
        for ms in 1..=1000u64 {
            s.record_ok(Duration::from_micros(ms * 10));
        }
        s.record_err(&tonic::Status::unavailable("etcdserver: leader changed"));
        s.record_err(&tonic::Status::unavailable("second"));
        s.record_err(&tonic::Status::deadline_exceeded("timeout"));
        s
    }

    #[test]
    fn summary_numbers_and_errors() {
        let stats = sample_stats();
        let s = summarize(
            RunInfo {
                op: "put".into(),
                endpoints: vec!["127.0.0.1:2379".into()],
                conns: 1,
                clients: 1,
                requests: 1003,
                elapsed: Duration::from_secs(2),
            },
            &stats,
            &stats.histogram().expect("histogram"),
        );
        assert_eq!(s.ok, 1000);
        assert_eq!(s.errors, 3);
        assert_eq!(s.error_codes.get("Unavailable"), Some(&2));
        assert_eq!(s.error_codes.get("DeadlineExceeded"), Some(&1));
        assert!((s.rps - 500.0).abs() < 1e-9);
        // Latencies are 0.01..=10 ms uniformly: p50 ~ 5 ms, p99 ~ 9.9 ms (3 significant digits).
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{}", s.p50_ms);
        assert!((s.p99_ms - 9.9).abs() < 0.01, "{}", s.p99_ms);
        assert!((s.fastest_ms - 0.01).abs() < 1e-4);
        assert!((s.slowest_ms - 10.0).abs() < 0.01);

        let text = render_text(&s, &stats, &stats.histogram().expect("histogram"));
        assert!(text.contains("Requests/sec:\t500.0000"));
        assert!(text.contains("  99.9% in "));
        assert!(text.contains("[2]\tUnavailable: etcdserver: leader changed"));

        let json = serde_json::to_string(&s).expect("json");
        assert!(json.contains("\"rps\":500.0"));
        assert!(json.contains("\"p99_9_ms\":"));
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = sample_stats();
        a.merge(sample_stats());
        assert_eq!(a.ok, 2000);
        assert_eq!(a.histogram().expect("histogram").len(), 2000);
        assert_eq!(a.errors["Unavailable"].count, 4);
        assert_eq!(
            a.errors["Unavailable"].example,
            "etcdserver: leader changed"
        );
    }
}
