//! The extender's Prometheus metrics: latency per verb, requests by pod
//! kind and result, and nodes filtered out by reason.

use std::fmt::Write as _;

use fast_sandbox_server::Registry;
use fast_sandbox_server::metrics::latency_buckets;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// Label-value enums rendered in lower snake case, as Prometheus labels
/// usually are.
macro_rules! label_value {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_value!(
    /// An extender verb.
    Verb {
        /// `filter`.
        Filter => "filter",
        /// `prioritize`.
        Prioritize => "prioritize",
    }
);

label_value!(
    /// Whether the pod was one the extender has an opinion on.
    PodKind {
        /// An agent pod of a pool.
        Agent => "agent",
        /// Any other pod: answered neutrally.
        Other => "other",
        /// The request could not be decoded.
        Unknown => "unknown",
    }
);

label_value!(
    /// How a request ended.
    Outcome {
        /// Answered.
        Ok => "ok",
        /// Malformed request.
        BadRequest => "bad_request",
    }
);

label_value!(
    /// Why a node was filtered out.
    FilterReason {
        /// Ready condition not True.
        NotReady => "not_ready",
        /// Cordoned.
        Unschedulable => "unschedulable",
        /// A never-pulled image is missing.
        ImageMissing => "image_missing",
    }
);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    verb: Verb,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: Verb,
    pod: PodKind,
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: FilterReason,
}

/// Handles on the registered metrics (cheap to clone).
#[derive(Clone, Debug)]
pub struct Metrics {
    duration: Family<VerbLabels, Histogram, fn() -> Histogram>,
    requests: Family<RequestLabels, Counter>,
    filtered: Family<ReasonLabels, Counter>,
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let m = Self {
            duration: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            requests: Family::default(),
            filtered: Family::default(),
        };
        registry.with(|r| {
            r.register(
                "extender_request_duration_seconds",
                "Time to answer a kube-scheduler extender call, by verb",
                m.duration.clone(),
            );
            r.register(
                "extender_requests",
                "Extender calls by verb, pod kind and outcome",
                m.requests.clone(),
            );
            r.register(
                "extender_filtered_nodes",
                "Nodes the filter verb ruled out for an agent pod, by reason",
                m.filtered.clone(),
            );
        });
        m
    }

    /// Records one answered call.
    pub fn observe(&self, verb: Verb, pod: PodKind, outcome: Outcome, seconds: f64) {
        self.duration
            .get_or_create(&VerbLabels { verb })
            .observe(seconds);
        self.requests
            .get_or_create(&RequestLabels { verb, pod, outcome })
            .inc();
    }

    /// Records a node ruled out.
    pub fn filtered(&self, reason: FilterReason) {
        self.filtered.get_or_create(&ReasonLabels { reason }).inc();
    }
}
