//! The agent's HTTPS API (`/v1`, see [`fast_sandbox_api::agent`]): routing,
//! request parsing and error mapping over [`Agent`]; exec and files have a
//! submodule each.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fast_sandbox_api::agent::{
    ApiError, CreateSandboxRequest, ErrorCode, JanitorRequest, NDJSON, PATH_EVENTS, PATH_IMAGES,
    PATH_INFO, PATH_JANITOR, PATH_SANDBOXES, PATH_STOCK, StockReleased,
};
use fast_sandbox_server::client_auth::AllowedNames;
use fast_sandbox_server::{Body, Handler, Peer, body};
use futures::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::agent::Agent;
use crate::error::Error;
use crate::logs::LogStream;

mod exec;
mod files;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;
/// A heartbeat goes out when the event stream was quiet this long.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// The request handler.
pub struct Api {
    agent: Arc<Agent>,
    metrics: crate::metrics::Metrics,
    callers: Option<AllowedNames>,
}

impl Api {
    /// Serves `agent`; with `callers`, only requests whose verified client
    /// certificate (the TLS layer checks it against the Fast Sandbox CA)
    /// bears one of those names are served: the controller and the access
    /// server, not any holder of a certificate of the CA.
    pub fn new(
        agent: Arc<Agent>,
        metrics: crate::metrics::Metrics,
        callers: Option<AllowedNames>,
    ) -> Self {
        Self {
            agent,
            metrics,
            callers,
        }
    }
}

fn error_response(metrics: &crate::metrics::Metrics, e: &ApiError) -> Response<Body> {
    metrics.error(e.code);
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    body::json(status, e)
}

pub(crate) fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

pub(crate) fn is_true(v: Option<&str>) -> bool {
    matches!(v, Some("true" | "1" | ""))
}

fn stream_response(
    content_type: &'static str,
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
) -> Response<Body> {
    let mut r = Response::new(body::stream(ReceiverStream::new(rx)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

impl Handler for Api {
    fn call(&self, req: Request<Incoming>, peer: Peer) -> BoxFuture<'static, Response<Body>> {
        let agent = self.agent.clone();
        let metrics = self.metrics.clone();
        let refused = self
            .callers
            .as_ref()
            .and_then(|names| names.check(&peer).err());
        Box::pin(async move {
            if let Some(e) = refused {
                tracing::warn!(peer = %peer.addr, error = %e, "agent API call refused");
                return error_response(
                    &metrics,
                    &ApiError::new(ErrorCode::Unauthenticated, e.to_string()),
                );
            }
            respond(&metrics, route(agent, req).await)
        })
    }
}

/// The response of a routed request: an error becomes its JSON body (and
/// is counted; an internal one is logged).
pub(crate) fn respond(
    metrics: &crate::metrics::Metrics,
    result: Result<Response<Body>, Error>,
) -> Response<Body> {
    match result {
        Ok(r) => r,
        Err(e) => {
            if e.code() == ErrorCode::Internal {
                tracing::warn!(error = %e, "request failed");
            }
            error_response(metrics, &e.to_api())
        }
    }
}

async fn route(agent: Arc<Agent>, req: Request<Incoming>) -> Result<Response<Body>, Error> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let query = query.as_deref();
    let rest = path.strip_prefix(PATH_SANDBOXES);
    match (&method, path.as_str(), rest) {
        (&Method::POST, PATH_SANDBOXES, _) => {
            let create: CreateSandboxRequest = read_json(req, "CreateSandboxRequest").await?;
            let a = agent.clone();
            let (info, created) = to_completion(async move { a.create(create).await }).await?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(body::json(status, &info))
        }
        (&Method::GET, PATH_SANDBOXES, _) => Ok(body::json(StatusCode::OK, &agent.list()?)),
        (&Method::GET, PATH_EVENTS, _) => {
            let since = query_param(query, "since").and_then(|s| s.parse().ok());
            Ok(stream_response(NDJSON, event_stream(agent, since)))
        }
        (&Method::GET, PATH_IMAGES, _) => Ok(body::json(StatusCode::OK, &agent.images().await?)),
        (&Method::GET, PATH_INFO, _) => Ok(body::json(StatusCode::OK, &agent.info())),
        (&Method::DELETE, PATH_STOCK, _) => {
            let a = agent.clone();
            let removed = to_completion(async move { Ok(a.release_stock().await) }).await?;
            Ok(body::json(StatusCode::OK, &StockReleased { removed }))
        }
        (&Method::POST, PATH_JANITOR, _) => {
            let sweep: JanitorRequest = read_json(req, "JanitorRequest").await?;
            let a = agent.clone();
            let report = to_completion(async move { a.janitor(&sweep).await }).await?;
            Ok(body::json(StatusCode::OK, &report))
        }
        (_, _, Some(rest)) if rest.starts_with('/') => {
            let rest = &rest[1..];
            let (uid, sub) = rest.split_once('/').unwrap_or((rest, ""));
            match (&method, sub) {
                (&Method::GET, "") => Ok(body::json(StatusCode::OK, &agent.get(uid)?)),
                (&Method::DELETE, "") => {
                    let grace = match query_param(query, "gracePeriodSeconds") {
                        Some(g) => Some(Duration::from_secs(g.parse().map_err(|_| {
                            invalid(
                                "gracePeriodSeconds",
                                format!("{g:?} is not a non-negative integer"),
                            )
                        })?)),
                        None => None,
                    };
                    let (a, uid) = (agent.clone(), uid.to_string());
                    let info = to_completion(async move { a.delete(&uid, grace).await }).await?;
                    Ok(body::json(StatusCode::OK, &info))
                }
                (&Method::GET, "logs") => logs(&agent, uid, query),
                (&Method::POST, "exec") => {
                    let uid = uid.to_string();
                    exec::exec(agent, &uid, req).await
                }
                (&Method::DELETE, sub) if sub.starts_with("exec/") => {
                    let session = &sub["exec/".len()..];
                    let ended = agent.execs().sessions().end(uid, session);
                    agent
                        .metrics()
                        .exec_session_end(if ended { "ended" } else { "none" });
                    if ended {
                        let mut r = Response::new(body::empty());
                        *r.status_mut() = StatusCode::NO_CONTENT;
                        Ok(r)
                    } else {
                        // Over already, or never named so.
                        Ok(not_found(&method, &path))
                    }
                }
                (&Method::GET | &Method::PUT | &Method::POST | &Method::DELETE, "files") => {
                    let uid = uid.to_string();
                    files::files(agent, &uid, req).await
                }
                _ => Ok(not_found(&method, &path)),
            }
        }
        _ => Ok(not_found(&method, &path)),
    }
}

/// Runs a call that changes containerd on a task of its own, so it goes to
/// its end when its caller goes away: hyper drops a request's future when
/// the client resets the stream (a controller killed mid-call), and a create
/// cut between its container and its start would stay `Created` for good.
async fn to_completion<T: Send + 'static>(
    call: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    match tokio::spawn(call).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Unavailable("shutting down")),
    }
}

/// `GET /v1/sandboxes/{uid}/logs?stream=stdout|stderr&follow=true`: one
/// output of a sandbox as `text/plain`; with `follow`, the body stays open
/// until the process exits.
fn logs(agent: &Agent, uid: &str, query: Option<&str>) -> Result<Response<Body>, Error> {
    let stream = match query_param(query, "stream") {
        None => LogStream::Stdout,
        Some(s) => LogStream::parse(s)
            .ok_or_else(|| invalid("stream", format!("{s:?} is neither stdout nor stderr")))?,
    };
    let follow = is_true(query_param(query, "follow"));
    let rx = agent.logs(uid, stream, follow)?;
    Ok(stream_response("text/plain; charset=utf-8", rx))
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    what: &str,
) -> Result<T, Error> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| invalid("body", format!("reading the body failed: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| invalid("body", format!("not a {what}: {e}")))
}

pub(crate) fn invalid(field: &str, message: String) -> Error {
    Error::Invalid(fast_sandbox_api::validation::FieldErrors(vec![
        fast_sandbox_api::validation::FieldError {
            field: field.to_string(),
            message,
        },
    ]))
}

pub(crate) fn not_found(method: &Method, path: &str) -> Response<Body> {
    body::json(
        StatusCode::NOT_FOUND,
        &ApiError::new(ErrorCode::NotFound, format!("no route for {method} {path}")),
    )
}

fn line(ev: &fast_sandbox_api::agent::SandboxEvent) -> Bytes {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// The NDJSON event stream: backlog after `since`, then live events, with a
/// heartbeat whenever nothing happened for [`HEARTBEAT`].
fn event_stream(agent: Arc<Agent>, since: Option<u64>) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(64);
    let sub = agent.subscribe(since);
    tokio::spawn(async move {
        for ev in &sub.backlog {
            if tx.send(Ok(line(ev))).await.is_err() {
                return;
            }
        }
        let mut last = sub.backlog.last().map_or(0, |e| e.seq);
        let mut live = sub.live;
        loop {
            let next = tokio::select! {
                r = live.recv() => r,
                () = tokio::time::sleep(HEARTBEAT) => {
                    if tx.send(Ok(line(&agent.heartbeat()))).await.is_err() {
                        return;
                    }
                    continue;
                }
                () = tx.closed() => return,
            };
            match next {
                Ok(ev) => {
                    if ev.seq <= last {
                        continue;
                    }
                    last = ev.seq;
                    if tx.send(Ok(line(&ev))).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // The client fell behind the fan-out; it must re-list.
                    let _ = tx
                        .send(Err(std::io::Error::other(format!(
                            "event stream lagged by {n} events; re-list and resume with since"
                        ))))
                        .await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found() {
        assert_eq!(
            query_param(Some("follow=true&stream=stderr"), "stream"),
            Some("stderr")
        );
        assert_eq!(query_param(Some("follow"), "follow"), Some(""));
        assert_eq!(query_param(None, "follow"), None);
        assert!(is_true(Some("true")));
        assert!(!is_true(Some("false")));
        assert!(!is_true(None));
    }
}
