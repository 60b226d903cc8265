//! The HTTPS endpoints kube-apiserver calls: `POST /mutate-sandbox` and
//! `POST /validate-sandboxpool` with an AdmissionReview. Served by the
//! shared server (TLS with certificate reload, HTTP/1.1 and HTTP/2,
//! `/healthz`, `/readyz`, `/metrics`). Callers are checked by the name of
//! their client certificate: only the apiserver may ask.

use std::time::Instant;

use bytes::Bytes;
use fast_sandbox_server::body::{self, Body};
use fast_sandbox_server::client_auth::AllowedNames;
use fast_sandbox_server::{Handler, Peer};
use futures::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::metrics::{Metrics, Outcome};
use crate::review::{Caller, Reviewer};

/// Path of the Sandbox admission endpoint (mutating: it binds).
pub const PATH: &str = "/mutate-sandbox";
/// Path of the SandboxPool admission endpoint (validating).
pub const POOL_PATH: &str = "/validate-sandboxpool";
/// Largest AdmissionReview accepted. The apiserver limits objects to about
/// 1.5 MiB, and an UPDATE carries two of them.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// The admission handler.
#[derive(Clone)]
pub struct Webhook {
    reviewer: Reviewer,
    metrics: Metrics,
    callers: Option<AllowedNames>,
}

impl Webhook {
    /// Answers reviews with `reviewer`, timing them into `metrics`. With
    /// `callers`, only clients whose verified certificate bears one of those
    /// names are answered; without, every caller is unknown and reserves
    /// nothing.
    pub fn new(reviewer: Reviewer, metrics: Metrics, callers: Option<AllowedNames>) -> Self {
        Webhook {
            reviewer,
            metrics,
            callers,
        }
    }

    /// Answers one review body from `caller`: 200 with an AdmissionReview,
    /// or 400 when the body is not one.
    pub async fn answer(&self, body: &[u8], caller: Caller) -> Response<Body> {
        let start = Instant::now();
        let (response, outcome) = match self.reviewer.review(body, caller).await {
            Ok(verdict) => {
                let mut r = Response::new(body::full(verdict.to_json()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                tracing::debug!(uid = %verdict.response.uid, outcome = ?verdict.outcome, "admission answered");
                (r, verdict.outcome)
            }
            Err(e) => {
                tracing::warn!(error = %e, "malformed admission request");
                (
                    body::text(StatusCode::BAD_REQUEST, e.to_string()),
                    Outcome::Malformed,
                )
            }
        };
        self.metrics
            .observe_admission(outcome, start.elapsed().as_secs_f64());
        response
    }
}

/// The most of a refused caller's request read before answering it.
const REFUSED_BODY_LIMIT: usize = 64 * 1024;

impl Handler for Webhook {
    fn call(&self, req: Request<Incoming>, peer: Peer) -> BoxFuture<'static, Response<Body>> {
        let this = self.clone();
        Box::pin(async move {
            let caller = match &this.callers {
                None => Caller::UNKNOWN,
                Some(names) => match names.check(&peer) {
                    Ok(_) => Caller::APISERVER,
                    Err(e) => {
                        this.metrics.observe_admission(Outcome::Forbidden, 0.0);
                        tracing::warn!(peer = %peer.addr, error = %e, "admission review from a caller that is not the apiserver refused");
                        // Read what it sent (bounded) before answering: an
                        // HTTP/2 stream answered with its body unread is
                        // reset, and the caller may lose the answer.
                        let _ = http_body_util::BodyExt::collect(http_body_util::Limited::new(
                            req.into_body(),
                            REFUSED_BODY_LIMIT,
                        ))
                        .await;
                        return body::text(StatusCode::FORBIDDEN, e.to_string());
                    }
                },
            };
            if req.uri().path() != PATH && req.uri().path() != POOL_PATH {
                return body::text(
                    StatusCode::NOT_FOUND,
                    format!("no such path: {}", req.uri().path()),
                );
            }
            if req.method() != Method::POST {
                return body::text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview");
            }
            let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    this.metrics.observe_admission(Outcome::Malformed, 0.0);
                    return body::text(
                        StatusCode::BAD_REQUEST,
                        format!("reading the request body: {e}"),
                    );
                }
            };
            this.answer(&bytes, caller).await
        })
    }
}
