//! A latency series and its percentiles.

use std::time::Duration;

use serde::Serialize;

/// Latencies of one configuration at one concurrency.
#[derive(Serialize, Clone, Debug)]
pub struct Series {
    /// Configuration, e.g. `sandbox` or `ctr run -d`.
    pub name: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Number of samples.
    pub runs: usize,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile, milliseconds.
    pub p95_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Mean, milliseconds.
    pub mean_ms: f64,
    /// Every sample in milliseconds, sorted (for plots).
    pub samples_ms: Vec<f64>,
}

impl Series {
    /// Computes the percentiles of `samples` (nearest rank).
    pub fn new(name: &str, concurrency: usize, samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if ms.is_empty() {
                return f64::NAN;
            }
            let i = ((ms.len() as f64 - 1.0) * p).round() as usize;
            ms[i.min(ms.len() - 1)]
        };
        Series {
            name: name.to_string(),
            concurrency,
            runs: ms.len(),
            p50_ms: pct(0.50),
            p95_ms: pct(0.95),
            p99_ms: pct(0.99),
            mean_ms: if ms.is_empty() {
                f64::NAN
            } else {
                ms.iter().sum::<f64>() / ms.len() as f64
            },
            samples_ms: ms,
        }
    }
}

/// A Markdown table of `results` with each p50 divided by the p50 of the
/// `baseline` series of the same concurrency (named in the last column).
pub fn markdown(results: &[Series], baseline: &str) -> String {
    let mut s = format!(
        "| configuration | concurrency | runs | p50 ms | p95 ms | p99 ms | mean ms | p50 / {baseline} p50 |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in results {
        let base = results
            .iter()
            .find(|f| f.name == baseline && f.concurrency == r.concurrency)
            .map_or(f64::NAN, |f| f.p50_ms);
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |\n",
            r.name,
            r.concurrency,
            r.runs,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.mean_ms,
            r.p50_ms / base
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_ratios() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Series::new("x", 1, &samples);
        assert_eq!(
            (s.p50_ms.round(), s.p95_ms.round(), s.p99_ms.round()),
            (51.0, 95.0, 99.0)
        );
        let b = Series::new("base", 1, &[Duration::from_millis(102)]);
        let table = markdown(&[b, s], "base");
        assert!(
            table.lines().nth(3).unwrap().ends_with("| 0.50 |"),
            "{table}"
        );
    }
}
