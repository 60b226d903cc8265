//! Errors of the reconcilers, with a short label per kind for metrics.

use fast_sandbox_agent_client::ClientError;

/// Why a reconcile failed; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An agent could not be reached or answered with an error.
    #[error("agent {agent}: {source}")]
    Agent {
        /// `namespace/pod` of the agent.
        agent: String,
        /// What went wrong.
        #[source]
        source: ClientError,
    },
    /// The node janitor could not sweep a node a create needed swept.
    #[error("node janitor on {node}: {source}")]
    Janitor {
        /// The node.
        node: String,
        /// What went wrong.
        #[source]
        source: crate::janitor::SweepError,
    },
    /// A JSON body could not be built.
    #[error("serialisation: {0}")]
    Json(#[from] serde_json::Error),
    /// The object lacks a field the controller needs (name, namespace, UID).
    #[error("object is missing {0}")]
    MissingField(&'static str),
}

impl Error {
    /// Short label of the error kind for the `reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Agent { .. } => "agent",
            Error::Janitor { .. } => "janitor",
            Error::Json(_) => "json",
            Error::MissingField(_) => "missing_field",
        }
    }
}
