//! The agent's read-only logs API: plain HTTP on the pod's loopback.
//!
//! It serves one route, `GET /v1/sandboxes/{uid}/logs` (the same query
//! parameters and answers as the mutual-TLS API, through the same code), and
//! a JSON 404 for everything else: nothing here creates, deletes or lists.
//! (The shared server also answers `/healthz`, `/readyz` and `/metrics`
//! here, as on the ops port.)
//! Bound to `127.0.0.1` in the agent pod's own network namespace, it is
//! reachable only from that pod and through `kubectl port-forward`, which
//! the apiserver gates with RBAC (`pods/portforward` on the agent pod).
//! Sandboxes have network namespaces of their own, so they cannot reach it.

use std::sync::Arc;

use fast_sandbox_api::agent::PATH_SANDBOXES;
use fast_sandbox_server::{Body, Handler, Peer};
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::agent::Agent;
use crate::api::{logs, not_found, respond};

/// The request handler of the read-only logs API.
pub struct LogsApi {
    agent: Arc<Agent>,
    metrics: crate::metrics::Metrics,
}

impl LogsApi {
    /// Serves the logs of `agent`'s sandboxes.
    pub fn new(agent: Arc<Agent>, metrics: crate::metrics::Metrics) -> Self {
        Self { agent, metrics }
    }
}

/// The sandbox UID of a `/v1/sandboxes/{uid}/logs` path.
fn logs_uid(path: &str) -> Option<&str> {
    let uid = path
        .strip_prefix(PATH_SANDBOXES)?
        .strip_prefix('/')?
        .strip_suffix("/logs")?;
    (!uid.is_empty() && !uid.contains('/')).then_some(uid)
}

impl Handler for LogsApi {
    fn call(&self, req: Request<Incoming>, _peer: Peer) -> BoxFuture<'static, Response<Body>> {
        let agent = self.agent.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let method = req.method();
            let path = req.uri().path();
            match logs_uid(path) {
                Some(uid) if method == Method::GET => {
                    respond(&metrics, logs(&agent, uid, req.uri().query()))
                }
                _ => not_found(method, path),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_logs_path_names_a_sandbox() {
        assert_eq!(logs_uid("/v1/sandboxes/abc-123/logs"), Some("abc-123"));
        assert_eq!(logs_uid("/v1/sandboxes/abc-123"), None);
        assert_eq!(logs_uid("/v1/sandboxes//logs"), None);
        assert_eq!(logs_uid("/v1/sandboxes/a/b/logs"), None);
        assert_eq!(logs_uid("/v1/sandboxes/logs"), None);
        assert_eq!(logs_uid("/v1/sandboxes"), None);
        assert_eq!(logs_uid("/v1/events"), None);
        assert_eq!(logs_uid("/v2/sandboxes/abc/logs"), None);
    }
}
