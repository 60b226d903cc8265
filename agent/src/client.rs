//! A client of the agent API over one long-lived HTTP/2 connection with
//! mutual TLS: what the controller does, in a form tests, benchmarks and
//! tools can use. Execs (one full-duplex stream each) and file operations
//! run on the same connection; see the `exec` and `files` submodules.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use fast_sandbox_api::agent::{
    ApiError, CreateSandboxRequest, JanitorReport, JanitorRequest, ListSandboxesResponse,
    PATH_JANITOR, PATH_SANDBOXES, PATH_STOCK, SandboxInfo, StockReleased, sandbox_path,
};
use fast_sandbox_server::flow;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

mod exec;
mod files;

pub use exec::{ExecEvent, ExecInput, ExecOutcome, ExecOutput, ExecStream};
pub use files::FileStream;

/// A request body: bytes known up front, or a stream (exec input, uploads).
pub type RequestBody = fast_sandbox_server::Body;

/// Why a call did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP or TLS failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Agent address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The server name is not a valid DNS name.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// HTTP failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("request: {0}")]
    Request(#[from] http::Error),
    /// The answer is not the expected JSON.
    #[error("decoding the answer ({status}): {message}")]
    Decode {
        /// HTTP status.
        status: StatusCode,
        /// What failed.
        message: String,
    },
    /// A streamed answer (an exec, a download) broke off before its end:
    /// the agent restarted or the connection failed.
    #[error("{0}")]
    StreamBroken(String),
}

/// One HTTP/2 connection to one agent.
#[derive(Clone)]
pub struct AgentClient {
    sender: SendRequest<RequestBody>,
    authority: String,
}

impl AgentClient {
    /// Connects to `addr`, verifying the agent's certificate for
    /// `server_name` with `tls` (which carries the client certificate).
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<ClientConfig>,
    ) -> Result<Self, ClientError> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| ClientError::ServerName(server_name.to_string()))?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let stream = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(flow::STREAM_WINDOW)
            .initial_connection_window_size(flow::CONNECTION_WINDOW)
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "agent connection ended");
            }
        });
        Ok(Self {
            sender,
            authority: format!("{server_name}:{}", addr.port()),
        })
    }

    /// Sends one request and returns the raw answer (streams stay open).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let content_type = body.is_some().then_some("application/json");
        let body = fast_sandbox_server::body::full(Bytes::from(body.unwrap_or_default()));
        self.send_body(method, path, content_type, body).await
    }

    /// Sends one request with any body (a stream included) and returns the
    /// raw answer.
    pub async fn send_body(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: RequestBody,
    ) -> Result<Response<Incoming>, ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority));
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        let req = builder.body(body)?;
        let mut sender = self.sender.clone();
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }

    /// Sends a request and decodes a JSON answer: `Ok(Ok(T))` on 2xx,
    /// `Ok(Err(ApiError))` when the agent refused.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Result<T, ApiError>), ClientError> {
        let resp = self.send(method, path, body).await?;
        decode(resp).await
    }

    /// Like [`AgentClient::call`] with any body.
    pub async fn call_body<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: RequestBody,
    ) -> Result<(StatusCode, Result<T, ApiError>), ClientError> {
        let resp = self.send_body(method, path, content_type, body).await?;
        decode(resp).await
    }
    /// `POST /v1/sandboxes`.
    pub async fn create(
        &self,
        req: &CreateSandboxRequest,
    ) -> Result<(StatusCode, Result<SandboxInfo, ApiError>), ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode {
            status: StatusCode::OK,
            message: e.to_string(),
        })?;
        self.call(Method::POST, PATH_SANDBOXES, Some(body)).await
    }

    /// `GET /v1/sandboxes/{uid}`.
    pub async fn get(&self, uid: &str) -> Result<Result<SandboxInfo, ApiError>, ClientError> {
        Ok(self.call(Method::GET, &sandbox_path(uid), None).await?.1)
    }

    /// `GET /v1/sandboxes`.
    pub async fn list(&self) -> Result<Result<ListSandboxesResponse, ApiError>, ClientError> {
        Ok(self.call(Method::GET, PATH_SANDBOXES, None).await?.1)
    }

    /// `POST /v1/janitor`.
    pub async fn janitor(
        &self,
        req: &JanitorRequest,
    ) -> Result<Result<JanitorReport, ApiError>, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode {
            status: StatusCode::OK,
            message: e.to_string(),
        })?;
        Ok(self.call(Method::POST, PATH_JANITOR, Some(body)).await?.1)
    }

    /// `DELETE /v1/stock`.
    pub async fn release_stock(&self) -> Result<Result<StockReleased, ApiError>, ClientError> {
        Ok(self.call(Method::DELETE, PATH_STOCK, None).await?.1)
    }

    /// `DELETE /v1/sandboxes/{uid}?gracePeriodSeconds=N`.
    pub async fn delete(
        &self,
        uid: &str,
        grace_seconds: u64,
    ) -> Result<(StatusCode, Result<SandboxInfo, ApiError>), ClientError> {
        let path = format!("{}?gracePeriodSeconds={grace_seconds}", sandbox_path(uid));
        self.call(Method::DELETE, &path, None).await
    }
}

/// Decodes a JSON answer: `Ok(T)` on 2xx, `Err(ApiError)` otherwise.
pub(crate) async fn decode<T: DeserializeOwned>(
    resp: Response<Incoming>,
) -> Result<(StatusCode, Result<T, ApiError>), ClientError> {
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let decode = |message: String| ClientError::Decode { status, message };
    if status.is_success() {
        let v = serde_json::from_slice(&bytes).map_err(|e| decode(e.to_string()))?;
        Ok((status, Ok(v)))
    } else {
        let e = serde_json::from_slice(&bytes)
            .map_err(|e| decode(format!("{e}: {}", String::from_utf8_lossy(&bytes))))?;
        Ok((status, Err(e)))
    }
}
