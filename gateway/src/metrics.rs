//! What the access server measures: requests by subresource and outcome,
//! and how long authorisation and the answer's first byte take.

use fast_sandbox_server::Registry;
use fast_sandbox_server::metrics::latency_buckets;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    subresource: String,
    outcome: String,
}

/// The access server's metrics; clones share the series.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    authorize: Histogram,
    respond: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

fn histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> Self {
        let m = Metrics {
            requests: Family::default(),
            authorize: histogram(),
            respond: Family::new_with_constructor(histogram),
        };
        registry.with(|r| {
            r.register(
                "gateway_requests",
                "Access API requests by subresource and outcome",
                m.requests.clone(),
            );
            r.register(
                "gateway_authorize_seconds",
                "Time to authorise a request (SubjectAccessReview, cached)",
                m.authorize.clone(),
            );
            r.register(
                "gateway_response_start_seconds",
                "Time from request to the answer's headers, by subresource",
                m.respond.clone(),
            );
        });
        m
    }

    /// Counts one request.
    pub fn request(&self, subresource: &str, outcome: &str, seconds: f64) {
        let labels = RequestLabels {
            subresource: subresource.to_string(),
            outcome: outcome.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
        self.respond.get_or_create(&labels).observe(seconds);
    }

    /// Times one authorisation.
    pub fn authorized(&self, seconds: f64) {
        self.authorize.observe(seconds);
    }
}
