//! The client side of the agent's HTTPS API (see `fast_sandbox_api::agent`),
//! for the controller and the access server: each presents its own client
//! certificate, which agents check by name.
//!
//! One long-lived HTTP/2 connection per agent, over mutual TLS, carries
//! every request and the event stream: no TLS handshake per sandbox. The
//! connection is opened on first use and again after it breaks; HTTP/2 pings
//! tell a dead peer from a quiet one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fast_sandbox_api::agent::{
    ApiError, CreateSandboxRequest, ErrorCode, JanitorReport, JanitorRequest,
    ListSandboxesResponse, PATH_EVENTS, PATH_JANITOR, PATH_SANDBOXES, PATH_STOCK, SandboxEvent,
    SandboxInfo, StockReleased, sandbox_path,
};
use fast_sandbox_server::flow;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

/// Name every agent's serving certificate carries; clients dial the pod IP
/// and verify this name.
pub const AGENT_SERVER_NAME: &str = "fast-sandbox-agent";
/// Longest a single request (not the event stream) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest an upload (a files `PUT`) may take: the agent answers once the
/// whole body is written, so [`REQUEST_TIMEOUT`] would cut off any upload
/// slower than it. A client that stops sending is cut off sooner, by the
/// gateway's idle timeout on the body.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest the TCP connect and TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of retiring an agent's stock: its removals take a few seconds
/// for a full stock of several images on a busy node.
pub const RELEASE_STOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect or TLS handshake failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Agent address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP/2 connection failed.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// The call took longer than its deadline.
    #[error("timed out")]
    Timeout,
    /// The agent answered with an error.
    #[error("agent answered {status}: {error}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The error body.
        error: ApiError,
    },
    /// The agent's answer was not the expected JSON.
    #[error("bad answer: {0}")]
    Decode(#[from] serde_json::Error),
    /// The client certificate files could not be read.
    #[error("client TLS: {0}")]
    Tls(String),
}

impl ClientError {
    /// The agent's error code, when it answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }

    /// Whether the agent could not be reached at all (as opposed to
    /// answering with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::Http(_) | ClientError::Timeout
        )
    }
}

/// Where the caller's client certificate and the agents' CA are; read
/// again for each new connection so rotated files take effect.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// Client certificate (PEM).
    pub cert: PathBuf,
    /// Client key (PEM).
    pub key: PathBuf,
    /// CA that signed the agents' certificates (PEM).
    pub ca: PathBuf,
}

impl ClientTls {
    /// Builds the rustls config from the files now.
    pub fn config(&self) -> Result<Arc<ClientConfig>, ClientError> {
        fast_sandbox_server::tls::client_config(&self.ca, Some((&self.cert, &self.key)))
            .map_err(|e| ClientError::Tls(e.to_string()))
    }
}

/// A request body: whole, or a stream (exec input, a file upload).
pub type RequestBody = fast_sandbox_server::Body;

/// A client of one agent, holding its one HTTP/2 connection.
pub struct AgentClient {
    addr: SocketAddr,
    tls: ClientTls,
    sender: Mutex<Option<SendRequest<RequestBody>>>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("addr", &self.addr)
            .finish()
    }
}

impl AgentClient {
    /// A client of the agent at `addr` (pod IP and API port); connects
    /// lazily.
    pub fn new(addr: SocketAddr, tls: ClientTls) -> Self {
        Self {
            addr,
            tls,
            sender: Mutex::new(None),
        }
    }

    /// The agent's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn sender(&self) -> Result<SendRequest<RequestBody>, ClientError> {
        let mut guard = self.sender.lock().await;
        if let Some(s) = guard.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let s = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| ClientError::Timeout)??;
        *guard = Some(s.clone());
        Ok(s)
    }

    async fn connect(&self) -> Result<SendRequest<RequestBody>, ClientError> {
        let config = self.tls.config()?;
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: self.addr,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let name =
            ServerName::try_from(AGENT_SERVER_NAME).map_err(|e| ClientError::Tls(e.to_string()))?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|source| ClientError::Connect {
                addr: self.addr,
                source,
            })?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(flow::STREAM_WINDOW)
            .initial_connection_window_size(flow::CONNECTION_WINDOW)
            .handshake(TokioIo::new(tls))
            .await?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "agent connection closed");
            }
        });
        tracing::debug!(%addr, "connected to agent");
        Ok(sender)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let content_type = body.is_some().then_some("application/json");
        let body = fast_sandbox_server::body::full(Bytes::from(body.unwrap_or_default()));
        self.send_body(method, path, content_type, body).await
    }

    /// Sends one request with any body, a stream included, and returns the
    /// answer as it starts (its body streams on).
    pub async fn send_body(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: RequestBody,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let mut sender = self.sender().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("https://{}{}", self.addr, path));
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(body)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }

    /// `POST /v1/sandboxes/{uid}/exec` with `frames` as the request body
    /// (the start frame first; see `fast_sandbox_api::exec`): the agent's
    /// output frames once it started the process, or its refusal.
    pub async fn exec(&self, uid: &str, frames: RequestBody) -> Result<Incoming, ClientError> {
        let path = fast_sandbox_api::agent::exec_path(uid);
        let fut = self.send_body(
            Method::POST,
            &path,
            Some(fast_sandbox_api::exec::EXEC_CONTENT_TYPE),
            frames,
        );
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| ClientError::Timeout)??;
        error_of(resp).await
    }

    /// Ends the exec named `session` (`ExecRequest::session`) as if its
    /// client had gone: its process is killed unless it detached. For a
    /// client gone while the exec's own stream is stalled. False when no
    /// running exec has that name (it ended already).
    pub async fn end_exec(&self, uid: &str, session: &str) -> Result<bool, ClientError> {
        let path = fast_sandbox_api::agent::exec_session_path(uid, session);
        let fut = self.send(Method::DELETE, &path, None);
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| ClientError::Timeout)??;
        match error_of(resp).await {
            Ok(_) => Ok(true),
            Err(ClientError::Api { status, .. }) if status == StatusCode::NOT_FOUND => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A files request (`fast_sandbox_api::files`) passed through: `query`
    /// as built by the caller, `body` streamed. The answer's status and
    /// headers once they arrive, its body streaming on; an agent refusal is
    /// [`ClientError::Api`].
    pub async fn files(
        &self,
        method: Method,
        query: &str,
        uid: &str,
        content_type: Option<&str>,
        body: RequestBody,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let path = format!("{}/files?{query}", sandbox_path(uid));
        let limit = if method == Method::PUT {
            UPLOAD_TIMEOUT
        } else {
            REQUEST_TIMEOUT
        };
        let fut = self.send_body(method, &path, content_type, body);
        let resp = tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| ClientError::Timeout)??;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(error_of(resp).await.err().unwrap_or(ClientError::Timeout))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, T), ClientError> {
        self.call_within(REQUEST_TIMEOUT, method, path, body).await
    }

    async fn call_within<T: DeserializeOwned>(
        &self,
        timeout: Duration,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, T), ClientError> {
        let fut = async {
            let resp = self.send(method, path, body).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            if !status.is_success() {
                let error = serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| {
                    ApiError::new(
                        code_of_status(status),
                        String::from_utf8_lossy(&bytes).into_owned(),
                    )
                });
                return Err(ClientError::Api { status, error });
            }
            Ok((status, serde_json::from_slice(&bytes)?))
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Creates the sandbox, or returns it if the agent already has it.
    pub async fn create(&self, req: &CreateSandboxRequest) -> Result<SandboxInfo, ClientError> {
        let body = serde_json::to_vec(req)?;
        Ok(self.call(Method::POST, PATH_SANDBOXES, Some(body)).await?.1)
    }

    /// Stops (SIGTERM, `grace` or the agent's default, SIGKILL) and deletes
    /// the sandbox; `None` when the agent had no such sandbox (already
    /// gone). The call may take the grace period on top of the usual
    /// deadline.
    pub async fn delete(
        &self,
        uid: &str,
        grace: Option<Duration>,
    ) -> Result<Option<SandboxInfo>, ClientError> {
        let (path, timeout) = match grace {
            Some(g) => (
                format!("{}?gracePeriodSeconds={}", sandbox_path(uid), g.as_secs()),
                REQUEST_TIMEOUT + g,
            ),
            None => (sandbox_path(uid), REQUEST_TIMEOUT),
        };
        match self.call_within(timeout, Method::DELETE, &path, None).await {
            Ok((_, info)) => Ok(Some(info)),
            Err(ClientError::Api { status, .. }) if status == StatusCode::NOT_FOUND => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Asks the agent to collect the containers of agent pods not in
    /// `req` (the controller's janitor states the fencing rule).
    pub async fn janitor(&self, req: &JanitorRequest) -> Result<JanitorReport, ClientError> {
        let body = serde_json::to_vec(req)?;
        Ok(self.call(Method::POST, PATH_JANITOR, Some(body)).await?.1)
    }

    /// Retires the agent's stock (it removes every pre-started sandbox and
    /// builds no more), before its pod is deleted.
    pub async fn release_stock(&self) -> Result<StockReleased, ClientError> {
        Ok(self
            .call_within(RELEASE_STOCK_TIMEOUT, Method::DELETE, PATH_STOCK, None)
            .await?
            .1)
    }

    /// Every sandbox the agent holds.
    pub async fn list(&self) -> Result<ListSandboxesResponse, ClientError> {
        Ok(self.call(Method::GET, PATH_SANDBOXES, None).await?.1)
    }

    /// One output of sandbox `uid` (`stdout` or `stderr`) as it is so far;
    /// with `follow`, the body stays open until the process exits. The
    /// body is passed on as it arrives, never held whole.
    pub async fn logs(
        &self,
        uid: &str,
        stream: &str,
        follow: bool,
    ) -> Result<Incoming, ClientError> {
        let path = format!(
            "{}?stream={stream}&follow={follow}",
            fast_sandbox_api::agent::logs_path(uid)
        );
        self.open(&path).await
    }

    /// A GET whose answer is a stream: the headers within the request
    /// deadline, the body for as long as it lasts.
    async fn open(&self, path: &str) -> Result<Incoming, ClientError> {
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.send(Method::GET, path, None))
            .await
            .map_err(|_| ClientError::Timeout)??;
        error_of(resp).await
    }

    /// Opens the event stream, starting after event `since`.
    pub async fn events(&self, since: u64) -> Result<EventStream, ClientError> {
        let body = self.open(&format!("{PATH_EVENTS}?since={since}")).await?;
        Ok(EventStream {
            body,
            buf: BytesMut::new(),
        })
    }
}

/// The body of a successful answer, or the agent's error as
/// [`ClientError::Api`].
async fn error_of(resp: hyper::Response<Incoming>) -> Result<Incoming, ClientError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp.into_body());
    }
    let bytes = resp.into_body().collect().await?.to_bytes();
    let error = serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| {
        ApiError::new(
            code_of_status(status),
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    });
    Err(ClientError::Api { status, error })
}

fn code_of_status(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        400 => ErrorCode::InvalidArgument,
        401 | 403 => ErrorCode::Unauthenticated,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::Conflict,
        422 => ErrorCode::ImageNotPresent,
        429 => ErrorCode::CapacityExceeded,
        503 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

/// The agent's newline-delimited JSON event stream.
#[derive(Debug)]
pub struct EventStream {
    body: Incoming,
    buf: BytesMut,
}

impl EventStream {
    /// The next event; `None` when the agent closed the stream.
    pub async fn next(&mut self) -> Option<Result<SandboxEvent, ClientError>> {
        loop {
            if let Some(line) = take_line(&mut self.buf) {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(serde_json::from_slice(&line).map_err(ClientError::from));
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
}

/// Splits the first complete line off `buf`.
fn take_line(buf: &mut BytesMut) -> Option<Bytes> {
    let i = buf.iter().position(|&b| b == b'\n')?;
    let line = buf.split_to(i + 1).freeze();
    Some(line.slice(..i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_frames() {
        let mut buf = BytesMut::from(&b"{\"a\":1}\n{\"b\""[..]);
        assert_eq!(take_line(&mut buf).as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(take_line(&mut buf), None);
        buf.extend_from_slice(b":2}\n");
        assert_eq!(take_line(&mut buf).as_deref(), Some(&b"{\"b\":2}"[..]));
    }

    #[test]
    fn status_codes_map_to_error_codes() {
        assert_eq!(
            code_of_status(StatusCode::TOO_MANY_REQUESTS),
            ErrorCode::CapacityExceeded
        );
        assert_eq!(code_of_status(StatusCode::NOT_FOUND), ErrorCode::NotFound);
    }
}
