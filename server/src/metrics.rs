//! A shared Prometheus registry rendered at `/metrics`.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry as Inner;

/// Cheap-to-clone handle on one Prometheus registry; every metric of a
/// process is registered here once at start-up.
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new("fast_sandbox")
    }
}

impl Registry {
    /// A registry whose metric names start with `prefix_`.
    pub fn new(prefix: &str) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::with_prefix(prefix))),
        }
    }

    /// Runs `f` on the registry, e.g. to register metrics.
    pub fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if encode(&mut out, &guard).is_err() {
            out.clear();
        }
        out
    }
}

/// Histogram buckets for latencies in seconds, from 100 µs to 10 s: the hot
/// path lives in the low milliseconds and a regression must show there.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035,
        0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}
