//! Errors of the reconcilers, with a short label per kind for metrics.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use fast_sandbox_agent_client::ClientError;
use futures::FutureExt;

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
    /// The apiserver refused an agent pod built from the pool's template
    /// (its validation, admission or a quota): the message is its own.
    #[error("the apiserver refused the pool's agent pod: {0}")]
    AgentPodRefused(String),
    /// The reconcile panicked: a bug, met on this object only.
    #[error("reconcile panicked: {0}")]
    Panicked(String),
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
            Error::AgentPodRefused(_) => "agent_pod_refused",
            Error::Panicked(_) => "panic",
        }
    }
}

/// Runs one object's reconcile, turning a panic into that object's error
/// (retried with backoff, counted, logged): an object, however odd, must
/// not take the controller and every other tenant's objects down with it.
pub async fn unwound<T>(reconcile: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    AssertUnwindSafe(reconcile)
        .catch_unwind()
        .await
        .unwrap_or_else(|p| Err(Error::Panicked(panic_message(p.as_ref()))))
}

fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_reconcile_is_that_objects_error() {
        let r: Result<(), Error> = unwound(async { panic!("odd object {}", 7) }).await;
        match r {
            Err(e @ Error::Panicked(_)) => {
                assert_eq!(e.to_string(), "reconcile panicked: odd object 7");
                assert_eq!(e.metric_label(), "panic");
            }
            other => panic!("{other:?}"),
        }
        let ok: Result<u8, Error> = unwound(async { Ok(1) }).await;
        assert_eq!(ok.ok(), Some(1));
    }
}
