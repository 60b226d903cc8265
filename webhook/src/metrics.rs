//! What the webhook measures: admission latency by outcome, and how often
//! placement found the image cached, fell back, or found no room.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// How an admission request ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    /// CREATE admitted and bound to an agent.
    Bound,
    /// CREATE admitted without an agent: the pool had no free slot.
    Unbound,
    /// Admitted without change (UPDATE, dry run of an unbound create, other
    /// operations).
    Allowed,
    /// Denied: invalid spec, unknown pool, forbidden change.
    Denied,
    /// The request itself could not be read.
    Malformed,
    /// The caller is not the apiserver.
    Forbidden,
}

/// Result of one placement decision.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Placement {
    /// The chosen agent's node holds the image.
    Hit,
    /// An agent was chosen whose node does not (visibly) hold the image.
    Miss,
    /// No agent had a free slot.
    NoCapacity,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlacementLabels {
    result: Placement,
}

/// The webhook's metrics; clones share the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    admission: Family<OutcomeLabels, Histogram>,
    placements: Family<PlacementLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics not yet registered anywhere.
    pub fn new() -> Self {
        Metrics {
            admission: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0,
                ])
            }),
            placements: Family::default(),
        }
    }

    /// Registers the series under `webhook_admission_duration_seconds` and
    /// `webhook_placements`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "webhook_admission_duration_seconds",
            "Time to answer one AdmissionReview, by outcome",
            self.admission.clone(),
        );
        registry.register(
            "webhook_placements",
            "Placement decisions at admission: image hit, miss, or no capacity",
            self.placements.clone(),
        );
    }

    /// Records one answered request.
    pub fn observe_admission(&self, outcome: Outcome, seconds: f64) {
        self.admission
            .get_or_create(&OutcomeLabels { outcome })
            .observe(seconds);
    }

    /// Records one placement decision.
    pub fn observe_placement(&self, result: Placement) {
        self.placements
            .get_or_create(&PlacementLabels { result })
            .inc();
    }

    /// Placements counted so far with `result` (tests and benchmarks).
    pub fn placements(&self, result: Placement) -> u64 {
        self.placements
            .get_or_create(&PlacementLabels { result })
            .get()
    }
}
