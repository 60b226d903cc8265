//! The HTTP side: `POST /filter` and `POST /prioritize` as kube-scheduler
//! calls them (`urlPrefix` + `/` + verb), from the scheduler only: its
//! client certificate's name is checked. `/healthz`, `/readyz` and
//! `/metrics` are answered by the shared server before this handler.

use bytes::Bytes;
use chrono::Utc;
use fast_sandbox_server::body::{self, Body};
use fast_sandbox_server::client_auth::AllowedNames;
use fast_sandbox_server::{Handler, Peer};
use futures::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::verbs::{Extender, VerbError};

/// Path of the filter verb.
pub const FILTER_PATH: &str = "/filter";
/// Path of the prioritize verb.
pub const PRIORITIZE_PATH: &str = "/prioritize";

/// Largest request accepted. With `nodeCacheCapable: false` the scheduler
/// sends whole Node objects (tens of KiB each); 5,000 of them fit.
pub const MAX_BODY_BYTES: usize = 256 << 20;

/// The extender's HTTP handler.
#[derive(Clone, Debug)]
pub struct Routes {
    extender: Extender,
    callers: Option<AllowedNames>,
}

impl Routes {
    /// Routes calls to `extender`; with `callers`, only clients whose
    /// verified certificate bears one of those names.
    pub fn new(extender: Extender, callers: Option<AllowedNames>) -> Self {
        Self { extender, callers }
    }
}

#[derive(Clone, Copy)]
enum Route {
    Filter,
    Prioritize,
}

impl Handler for Routes {
    fn call(&self, req: Request<Incoming>, peer: Peer) -> BoxFuture<'static, Response<Body>> {
        if let Some(names) = &self.callers
            && let Err(e) = names.check(&peer)
        {
            tracing::warn!(peer = %peer.addr, error = %e, "extender call from a caller that is not the scheduler refused");
            return Box::pin(async move { body::text(StatusCode::FORBIDDEN, e.to_string()) });
        }
        let route = match req.uri().path() {
            FILTER_PATH => Route::Filter,
            PRIORITIZE_PATH => Route::Prioritize,
            path => {
                let msg = format!("no such path: {path}");
                return Box::pin(async move { body::text(StatusCode::NOT_FOUND, msg) });
            }
        };
        if req.method() != Method::POST {
            return Box::pin(async move {
                let mut r = body::text(StatusCode::METHOD_NOT_ALLOWED, "use POST");
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                r
            });
        }
        let extender = self.extender.clone();
        Box::pin(async move {
            let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    tracing::warn!(peer = %peer.addr, error = %e, "reading extender request failed");
                    return body::text(
                        StatusCode::BAD_REQUEST,
                        format!("reading the body failed: {e}"),
                    );
                }
            };
            let answer = match route {
                Route::Filter => extender.filter(&bytes),
                Route::Prioritize => extender.prioritize(&bytes, Utc::now()),
            };
            match answer {
                Ok(json) => {
                    let mut r = Response::new(body::full(json));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    r
                }
                Err(e @ VerbError::Decode(_)) => {
                    tracing::warn!(peer = %peer.addr, error = %e, "malformed extender request");
                    body::text(StatusCode::BAD_REQUEST, e.to_string())
                }
            }
        })
    }
}
