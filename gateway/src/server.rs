//! The handler kube-apiserver's aggregator calls: it authenticates the
//! apiserver (its front-proxy client certificate, verified in the TLS
//! handshake, with an allowed name), takes the user the apiserver
//! authenticated from its headers, authorises that user with a
//! SubjectAccessReview on the subresource, finds the sandbox's agent and
//! answers from it.

use std::sync::Arc;
use std::time::Instant;

use fast_sandbox_api::wellknown::SUBRESOURCE_GROUP;
use fast_sandbox_k8s::access_review::{Authorizer, Question};
use fast_sandbox_k8s::cluster_trust::{ClusterTrust, UserInfo};
use fast_sandbox_server::body::{self, Body};
use fast_sandbox_server::{Handler, Peer};
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::discovery;
use crate::metrics::Metrics;
use crate::request::{Route, Subresource, Target, route};
use crate::resolve::Resolver;
use crate::status::GatewayError;

/// The access server's request handler.
#[derive(Clone)]
pub struct Gateway {
    trust: Arc<ClusterTrust>,
    authorizer: Arc<Authorizer>,
    resolver: Arc<Resolver>,
    metrics: Metrics,
}

impl Gateway {
    /// Authenticates callers with `trust`, authorises users with
    /// `authorizer`, reaches sandboxes through `resolver`.
    pub fn new(
        trust: Arc<ClusterTrust>,
        authorizer: Arc<Authorizer>,
        resolver: Arc<Resolver>,
        metrics: Metrics,
    ) -> Self {
        Self {
            trust,
            authorizer,
            resolver,
            metrics,
        }
    }
}

/// The RBAC verb a request needs: `get` to read logs and files, `create`
/// to exec (as `pods/exec`) and to change files.
fn verb(sub: Subresource, method: &Method) -> Result<&'static str, GatewayError> {
    match (sub, method) {
        (Subresource::Log, &Method::GET) => Ok("get"),
        (Subresource::Exec, &Method::GET | &Method::POST) => Ok("create"),
        (Subresource::Files, m) => crate::files::verb(m),
        (sub, m) => Err(GatewayError::BadRequest(format!(
            "method {m} is not supported on sandboxes/{}",
            sub.as_str()
        ))),
    }
}

impl Gateway {
    async fn authorize(&self, user: &UserInfo, t: &Target, verb: &str) -> Result<(), GatewayError> {
        let started = Instant::now();
        let q = Question {
            group: SUBRESOURCE_GROUP.to_string(),
            resource: "sandboxes".to_string(),
            subresource: t.subresource.as_str().to_string(),
            verb: verb.to_string(),
            namespace: t.namespace.clone(),
            name: t.name.clone(),
        };
        let decision = self
            .authorizer
            .review(user, &q)
            .await
            .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
        self.metrics.authorized(started.elapsed().as_secs_f64());
        if decision.allowed {
            return Ok(());
        }
        let why = if decision.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", decision.reason)
        };
        Err(GatewayError::Forbidden(format!(
            "sandboxes.{SUBRESOURCE_GROUP} \"{}\" is forbidden: User \"{}\" cannot {verb} resource \"sandboxes/{}\" in API group \"{SUBRESOURCE_GROUP}\" in the namespace \"{}\"{why}",
            t.name,
            user.username,
            t.subresource.as_str(),
            t.namespace
        )))
    }

    async fn sandbox(
        &self,
        req: Request<Incoming>,
        user: UserInfo,
        t: Target,
    ) -> Result<Response<Body>, GatewayError> {
        let verb = verb(t.subresource, req.method())?;
        self.authorize(&user, &t, verb).await?;
        let resolved = self.resolver.resolve(&t.namespace, &t.name).await?;
        tracing::debug!(user = %user.username, namespace = %t.namespace, sandbox = %t.name, subresource = t.subresource.as_str(), agent = %resolved.agent_pod, "serving");
        match t.subresource {
            Subresource::Log => crate::logs::serve(&resolved, req.uri().query()).await,
            Subresource::Exec => crate::exec::serve(&resolved, req).await,
            Subresource::Files => crate::files::serve(&resolved, req).await,
        }
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: Peer,
    ) -> (String, Result<Response<Body>, GatewayError>) {
        let user = match self.trust.forwarded_user(&peer, req.headers()) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(peer = %peer.addr, error = %e, "request not from the apiserver's front proxy refused");
                return (
                    "none".into(),
                    Err(GatewayError::Unauthorized(format!(
                        "only kube-apiserver may call this server: {e}"
                    ))),
                );
            }
        };
        let path = req.uri().path().to_string();
        match route(&path) {
            Err(e) => ("none".into(), Err(e)),
            Ok(Route::Groups) => (
                "discovery".into(),
                Ok(body::json(StatusCode::OK, &discovery::group_list())),
            ),
            Ok(Route::Group) => (
                "discovery".into(),
                Ok(body::json(StatusCode::OK, &discovery::api_group())),
            ),
            Ok(Route::Resources) => (
                "discovery".into(),
                Ok(body::json(StatusCode::OK, &discovery::resource_list())),
            ),
            Ok(Route::Sandbox(t)) => {
                let sub = t.subresource.as_str().to_string();
                (sub, self.sandbox(req, user, t).await)
            }
        }
    }
}

impl Handler for Gateway {
    fn call(&self, req: Request<Incoming>, peer: Peer) -> BoxFuture<'static, Response<Body>> {
        let me = self.clone();
        Box::pin(async move {
            let started = Instant::now();
            let (sub, result) = me.handle(req, peer).await;
            let (resp, outcome) = match result {
                Ok(r) => (r, "ok"),
                Err(e) => {
                    if matches!(e, GatewayError::Internal(_) | GatewayError::Unavailable(_)) {
                        tracing::warn!(error = %e, "access request failed");
                    }
                    (e.response(), e.label())
                }
            };
            me.metrics
                .request(&sub, outcome, started.elapsed().as_secs_f64());
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_subresource_names_its_verb() {
        assert_eq!(verb(Subresource::Log, &Method::GET).unwrap(), "get");
        assert!(verb(Subresource::Log, &Method::DELETE).is_err());
        assert_eq!(verb(Subresource::Exec, &Method::GET).unwrap(), "create");
        assert_eq!(verb(Subresource::Files, &Method::GET).unwrap(), "get");
        assert_eq!(verb(Subresource::Files, &Method::PUT).unwrap(), "update");
    }
}
