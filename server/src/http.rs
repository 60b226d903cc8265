//! One accept loop for every server: TLS (optional), HTTP/1.1 and HTTP/2 on
//! the same port, the operational endpoints answered before the handler,
//! graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::body::Body;
use crate::flow;
use crate::ops::Ops;

/// A TLS handshake slower than this is dropped, so idle sockets cannot hold
/// the server.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (EMFILE, ENOMEM): they come back at once
/// until something closes.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Who sent a request.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Remote address.
    pub addr: SocketAddr,
    /// Leaf certificate the client presented (mutual TLS), if any.
    pub client_cert: Option<CertificateDer<'static>>,
}

/// The application part of a server.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. Errors are responses too: a handler never fails.
    fn call(&self, req: Request<Incoming>, peer: Peer) -> BoxFuture<'static, Response<Body>>;
}

/// Serves `handler` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish. `/healthz`, `/readyz` and `/metrics` are
/// answered from `ops` on this port too.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    ops: Ops,
    handler: Arc<dyn Handler>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors (or memory) fails every accept
                    // at once: pause rather than spin a core until some close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let ops = ops.clone();
        let handler = handler.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http2()
                .initial_stream_window_size(flow::STREAM_WINDOW)
                .initial_connection_window_size(flow::CONNECTION_WINDOW)
                .max_concurrent_streams(flow::MAX_STREAMS);
            match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%addr, "TLS handshake timed out");
                            return;
                        }
                    };
                    let client_cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first().cloned())
                        .map(|c| c.into_owned());
                    let peer = Peer { addr, client_cert };
                    let svc = service(ops, handler, peer);
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%addr, error = %e, "connection ended with an error");
                    }
                }
                None => {
                    let peer = Peer {
                        addr,
                        client_cert: None,
                    };
                    let svc = service(ops, handler, peer);
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%addr, error = %e, "connection ended with an error");
                    }
                }
            }
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("connections still open after the drain timeout; closing");
        }
    }
}

fn service(
    ops: Ops,
    handler: Arc<dyn Handler>,
    peer: Peer,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = std::convert::Infallible,
    Future = BoxFuture<'static, Result<Response<Body>, std::convert::Infallible>>,
> + Clone {
    service_fn(move |req: Request<Incoming>| {
        let answer = ops.answer(req.method(), req.uri().path());
        let fut: BoxFuture<'static, Response<Body>> = match answer {
            Some(resp) => Box::pin(async move { resp }),
            None => handler.call(req, peer.clone()),
        };
        Box::pin(async move { Ok(fut.await) }) as BoxFuture<'static, _>
    })
}

struct NotFound;

impl Handler for NotFound {
    fn call(&self, req: Request<Incoming>, _peer: Peer) -> BoxFuture<'static, Response<Body>> {
        let path = req.uri().path().to_string();
        Box::pin(async move {
            crate::body::text(http::StatusCode::NOT_FOUND, format!("no such path: {path}"))
        })
    }
}

/// Serves only the operational endpoints over plain HTTP (probes, Prometheus).
pub async fn serve_ops(listener: TcpListener, ops: Ops, shutdown: impl Future<Output = ()>) {
    serve(listener, None, ops, Arc::new(NotFound), shutdown).await
}
