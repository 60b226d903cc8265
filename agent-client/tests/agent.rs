//! The agent client over real HTTPS with mutual TLS and HTTP/2, against a
//! small in-process agent served by the shared server code: idempotent
//! create, capacity refusal, delete and 404, list, the NDJSON event stream,
//! one connection for every call, streams that stall without stalling the
//! connection, and refusal of a client from another CA.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fast_sandbox_agent_client::{AgentClient, ClientTls};
use fast_sandbox_api::agent::{
    AgentInfo, ApiError, ContainerState, CreateSandboxRequest, ErrorCode, EventKind,
    ListSandboxesResponse, PATH_EVENTS, PATH_SANDBOXES, SandboxEvent, SandboxInfo,
};
use fast_sandbox_server::{Handler, Ops, Peer, body, serve, tls};
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

const WAIT: Duration = Duration::from_secs(5);

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn leaf(&self, dir: &Path, file: &str, dns: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec![dns.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, dns);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let c = dir.join(format!("{file}.crt"));
        let k = dir.join(format!("{file}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let p = dir.join(file);
        std::fs::write(&p, self.issuer.pem()).unwrap();
        p
    }
}

/// A one-slot agent keeping sandboxes in memory.
struct MiniAgent {
    sandboxes: Mutex<HashMap<String, SandboxInfo>>,
    /// The query of every DELETE, in order.
    delete_queries: Mutex<Vec<Option<String>>>,
    events: broadcast::Sender<SandboxEvent>,
    peers: Mutex<HashSet<SocketAddr>>,
    /// Request bodies of `/test/hold`, kept and never read.
    held: Mutex<Vec<Incoming>>,
    /// Bytes the `/test/blob` answers have handed to the connection.
    blob_sent: Arc<AtomicUsize>,
}

/// A body of `len` bytes in 64 KiB chunks, counting into `sent` what the
/// connection has taken.
fn chunks(
    len: usize,
    sent: Arc<AtomicUsize>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    const CHUNK: usize = 64 * 1024;
    futures::stream::iter((0..len).step_by(CHUNK).map(move |at| {
        let n = CHUNK.min(len - at);
        sent.fetch_add(n, Ordering::SeqCst);
        Ok(Bytes::from(vec![7u8; n]))
    }))
}

fn error(status: StatusCode, code: ErrorCode) -> Response<body::Body> {
    body::json(status, &ApiError::new(code, "refused"))
}

impl MiniAgent {
    async fn answer(self: Arc<Self>, req: Request<Incoming>) -> Response<body::Body> {
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::POST, PATH_SANDBOXES) => {
                let bytes = req.into_body().collect().await.unwrap().to_bytes();
                let r: CreateSandboxRequest = serde_json::from_slice(&bytes).unwrap();
                let mut all = self.sandboxes.lock().unwrap();
                if let Some(existing) = all.get(&r.uid) {
                    return body::json(StatusCode::OK, existing);
                }
                if !all.is_empty() {
                    return error(StatusCode::TOO_MANY_REQUESTS, ErrorCode::CapacityExceeded);
                }
                let info = SandboxInfo {
                    uid: r.uid.clone(),
                    name: r.name,
                    namespace: r.namespace,
                    container_id: format!("c-{}", r.uid),
                    image: r.image,
                    state: ContainerState::Running,
                    reset_revision: r.reset_revision,
                    ..Default::default()
                };
                all.insert(r.uid, info.clone());
                let _ = self.events.send(SandboxEvent {
                    seq: 1,
                    kind: EventKind::Started,
                    at: chrono::Utc::now(),
                    sandbox: Some(info.clone()),
                });
                body::json(StatusCode::CREATED, &info)
            }
            (Method::GET, PATH_SANDBOXES) => {
                let sandboxes = self.sandboxes.lock().unwrap().values().cloned().collect();
                body::json(
                    StatusCode::OK,
                    &ListSandboxesResponse {
                        agent: AgentInfo::default(),
                        sandboxes,
                        last_event_seq: 0,
                    },
                )
            }
            (Method::GET, PATH_EVENTS) => {
                let mut rx = self.events.subscribe();
                let (tx, out) = mpsc::channel::<std::io::Result<Bytes>>(8);
                tokio::spawn(async move {
                    while let Ok(ev) = rx.recv().await {
                        let mut line = serde_json::to_vec(&ev).unwrap();
                        line.push(b'\n');
                        if tx.send(Ok(Bytes::from(line))).await.is_err() {
                            return;
                        }
                    }
                });
                let mut resp = Response::new(body::stream(tokio_stream_of(out)));
                *resp.status_mut() = StatusCode::OK;
                resp
            }
            (Method::DELETE, p) if p.starts_with(PATH_SANDBOXES) => {
                self.delete_queries
                    .lock()
                    .unwrap()
                    .push(req.uri().query().map(str::to_string));
                let uid = p.rsplit('/').next().unwrap_or_default();
                match self.sandboxes.lock().unwrap().remove(uid) {
                    Some(info) => body::json(StatusCode::OK, &info),
                    None => error(StatusCode::NOT_FOUND, ErrorCode::NotFound),
                }
            }
            // Like stdin for a process that never reads it.
            (Method::POST, "/test/hold") => {
                self.held.lock().unwrap().push(req.into_body());
                Response::new(body::full(Bytes::new()))
            }
            (Method::GET, p) if p.starts_with("/test/blob/") => {
                let len = p.rsplit('/').next().unwrap().parse().unwrap();
                Response::new(body::stream(chunks(len, self.blob_sent.clone())))
            }
            (Method::PUT, "/test/sink") => {
                let n = req.into_body().collect().await.unwrap().to_bytes().len();
                Response::new(body::full(Bytes::from(n.to_string())))
            }
            _ => error(StatusCode::NOT_FOUND, ErrorCode::NotFound),
        }
    }
}

fn tokio_stream_of(
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

struct Served(Arc<MiniAgent>);

impl Handler for Served {
    fn call(&self, req: Request<Incoming>, peer: Peer) -> BoxFuture<'static, Response<body::Body>> {
        self.0.peers.lock().unwrap().insert(peer.addr);
        Box::pin(self.0.clone().answer(req))
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    agent: Arc<MiniAgent>,
    client_tls: ClientTls,
    stranger_tls: ClientTls,
}

async fn setup() -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("fast-sandbox-ca");
    let ca_path = ca.write(dir.path(), "ca.crt");
    let (server_cert, server_key) = ca.leaf(dir.path(), "agent", "fast-sandbox-agent");
    let (client_cert, client_key) = ca.leaf(dir.path(), "client", "fast-sandbox-controller");
    let other = Ca::new("someone-else");
    let (stranger_cert, stranger_key) =
        other.leaf(dir.path(), "stranger", "fast-sandbox-controller");

    let server = tls::ServerTls {
        cert: server_cert,
        key: server_key,
        client_ca: Some(ca_path.clone()),
    }
    .build()
    .unwrap();
    let agent = Arc::new(MiniAgent {
        sandboxes: Mutex::new(HashMap::new()),
        delete_queries: Mutex::new(Vec::new()),
        events: broadcast::channel(16).0,
        peers: Mutex::new(HashSet::new()),
        held: Mutex::new(Vec::new()),
        blob_sent: Arc::new(AtomicUsize::new(0)),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        Some(server),
        Ops::default(),
        Arc::new(Served(agent.clone())),
        std::future::pending(),
    ));
    Setup {
        addr,
        agent,
        client_tls: ClientTls {
            cert: client_cert,
            key: client_key,
            ca: ca_path.clone(),
        },
        stranger_tls: ClientTls {
            cert: stranger_cert,
            key: stranger_key,
            ca: ca_path,
        },
        _dir: dir,
    }
}

fn request(uid: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        uid: uid.into(),
        name: format!("sb-{uid}"),
        namespace: "ns".into(),
        pool: "pool".into(),
        image: "docker.io/fast-sandbox/busybox:dev".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn create_is_idempotent_and_capacity_is_refused_over_one_connection() {
    let s = setup().await;
    let client = AgentClient::new(s.addr, s.client_tls.clone());

    let mut events = tokio::time::timeout(WAIT, client.events(0))
        .await
        .expect("opening the event stream timed out")
        .unwrap();

    let first = client.create(&request("u1")).await.unwrap();
    assert_eq!(first.state, ContainerState::Running);
    let again = client.create(&request("u1")).await.unwrap();
    assert_eq!(again.container_id, first.container_id);

    let full = client.create(&request("u2")).await.unwrap_err();
    assert_eq!(full.code(), Some(ErrorCode::CapacityExceeded));
    assert!(!full.is_unreachable());

    let ev = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("no event within 5s")
        .expect("stream ended")
        .unwrap();
    assert_eq!(ev.kind, EventKind::Started);
    assert_eq!(ev.sandbox.unwrap().uid, "u1");

    let list = client.list().await.unwrap();
    assert_eq!(list.sandboxes.len(), 1);

    assert!(
        client
            .delete("u1", Some(Duration::ZERO))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        client.delete("u1", None).await.unwrap().is_none(),
        "404 means already gone"
    );
    assert_eq!(
        *s.agent.delete_queries.lock().unwrap(),
        [Some("gracePeriodSeconds=0".to_string()), None],
        "a grace period is sent only when the sandbox names one"
    );

    let peers = s.agent.peers.lock().unwrap().len();
    assert_eq!(
        peers, 1,
        "every call and the event stream share one connection"
    );
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let s = setup().await;
    let client = AgentClient::new(s.addr, s.stranger_tls.clone());
    let err = client.list().await.unwrap_err();
    assert!(
        err.is_unreachable() || err.code() == Some(ErrorCode::Unauthenticated),
        "{err}"
    );
    assert!(s.agent.sandboxes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn unreachable_agent_fails_fast() {
    // Nothing listens: the call fails at once as unreachable (the follower
    // then backs off and retries).
    let s = setup().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let client = AgentClient::new(dead, s.client_tls.clone());
    let err = client.list().await.unwrap_err();
    assert!(err.is_unreachable(), "{err}");
}

/// Waits until `counter` reaches `at_least`.
async fn reaches(what: &str, counter: &AtomicUsize, at_least: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while counter.load(Ordering::SeqCst) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} bytes sent within {WAIT:?}, expected {at_least}",
            counter.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn streams_that_stall_do_not_stall_their_connection() {
    // An access-server replica reaches each agent over one connection: one
    // tenant's stdin that its process never reads, or downloads it stopped
    // reading, must not freeze every other exec and transfer on that agent.
    const LEN: usize = 4 << 20;
    let s = setup().await;
    let client = AgentClient::new(s.addr, s.client_tls.clone());

    let uploaded = Arc::new(AtomicUsize::new(0));
    for _ in 0..4 {
        let body = body::stream(chunks(LEN, uploaded.clone()));
        let r = tokio::time::timeout(
            WAIT,
            client.send_body(Method::POST, "/test/hold", None, body),
        )
        .await
        .expect("a held upload was not answered")
        .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let mut unread = Vec::new();
    for _ in 0..4 {
        let r = tokio::time::timeout(
            WAIT,
            client.send_body(
                Method::GET,
                &format!("/test/blob/{LEN}"),
                None,
                body::full(Bytes::new()),
            ),
        )
        .await
        .expect("a download did not start")
        .unwrap();
        unread.push(r);
    }
    reaches("stalled uploads", &uploaded, 1 << 20).await;
    reaches("stalled downloads", &s.agent.blob_sent, 1 << 20).await;

    // The same connection still carries a whole upload, a whole download and
    // an API call.
    let sink = client.send_body(
        Method::PUT,
        "/test/sink",
        None,
        body::stream(chunks(LEN, Arc::new(AtomicUsize::new(0)))),
    );
    let r = tokio::time::timeout(WAIT, async {
        sink.await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
    })
    .await
    .expect("an upload or its answer stalled behind stalled streams on its connection");
    assert_eq!(r, LEN.to_string());
    let blob = tokio::time::timeout(WAIT, async {
        let r = client
            .send_body(
                Method::GET,
                &format!("/test/blob/{LEN}"),
                None,
                body::full(Bytes::new()),
            )
            .await
            .unwrap();
        r.into_body().collect().await.unwrap().to_bytes().len()
    })
    .await
    .expect("a download stalled behind stalled streams on its connection");
    assert_eq!(blob, LEN);
    tokio::time::timeout(WAIT, client.list())
        .await
        .expect("an API call stalled behind stalled streams on its connection")
        .unwrap();

    // A stalled download was only waiting: read now, it is whole.
    let late = tokio::time::timeout(WAIT, unread.pop().unwrap().into_body().collect())
        .await
        .expect("a stalled download did not resume")
        .unwrap();
    assert_eq!(late.to_bytes().len(), LEN);
    assert_eq!(
        s.agent.peers.lock().unwrap().len(),
        1,
        "all on one connection"
    );
}
