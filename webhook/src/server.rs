//! The HTTPS endpoint kube-apiserver calls: `POST /mutate-sandbox` with an
//! AdmissionReview. Served by the shared server (TLS with certificate
//! reload, HTTP/1.1 and HTTP/2, `/healthz`, `/readyz`, `/metrics`).

use std::time::Instant;

use bytes::Bytes;
use fast_sandbox_server::body::{self, Body};
use fast_sandbox_server::{Handler, Peer};
use futures::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::metrics::{Metrics, Outcome};
use crate::review::Reviewer;

/// Path of the admission endpoint.
pub const PATH: &str = "/mutate-sandbox";
/// Largest AdmissionReview accepted. The apiserver limits objects to about
/// 1.5 MiB, and an UPDATE carries two of them.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// The admission handler.
#[derive(Clone)]
pub struct Webhook {
    reviewer: Reviewer,
    metrics: Metrics,
}

impl Webhook {
    /// Answers reviews with `reviewer`, timing them into `metrics`.
    pub fn new(reviewer: Reviewer, metrics: Metrics) -> Self {
        Webhook { reviewer, metrics }
    }

    /// Answers one review body: 200 with an AdmissionReview, or 400 when the
    /// body is not one.
    pub async fn answer(&self, body: &[u8]) -> Response<Body> {
        let start = Instant::now();
        let (response, outcome) = match self.reviewer.review(body).await {
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

impl Handler for Webhook {
    fn call(&self, req: Request<Incoming>, _peer: Peer) -> BoxFuture<'static, Response<Body>> {
        let this = self.clone();
        Box::pin(async move {
            if req.uri().path() != PATH {
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
            this.answer(&bytes).await
        })
    }
}
