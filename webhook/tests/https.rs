//! The webhook over real HTTPS: AdmissionReview JSON as kube-apiserver sends
//! it, a client that verifies our CA and presents the apiserver's client
//! certificate (certificates made by the certs library), HTTP/2 and
//! HTTP/1.1, malformed bodies, concurrent admissions, callers that are not
//! the apiserver refused, and certificate rotation without restart. The
//! placement index is fed directly; no apiserver is involved.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fast_sandbox_certs::authority::Authority;
use fast_sandbox_certs::leaf::{LeafSpec, Usage};
use fast_sandbox_certs::store::write_atomically;
use fast_sandbox_placement::{AgentState, Index};
use fast_sandbox_server::client_auth::{AllowedNames, ClientCa};
use fast_sandbox_server::tls::{ServerTls, client_config};
use fast_sandbox_server::{Ops, serve};
use fast_sandbox_webhook::metrics::{Metrics, Placement};
use fast_sandbox_webhook::review::{DEFAULT_CONTROLLER_USERNAME, Reviewer};
use fast_sandbox_webhook::server::Webhook;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

const SERVER_NAME: &str = "fast-sandbox-webhook.fast-sandbox-system.svc";
const APISERVER: &str = "kube-apiserver-webhook-client";
const FIXTURE: &str = include_str!("fixtures/create-sandbox.json");

struct Server {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    ca: Authority,
    index: Arc<Index>,
    metrics: Metrics,
    ops: Ops,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    async fn start(slots: u32) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::generate().unwrap();
        write_atomically(&dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        issue(&ca, dir.path());

        let index = Arc::new(Index::new());
        index.upsert_pool("default/default-pool");
        index.upsert_agent(AgentState {
            pool_key: "default/default-pool".into(),
            pod_name: "default-pool-agent-0".into(),
            node_name: "node-1".into(),
            ready: true,
            draining: false,
            slots_total: slots,
            images: vec!["docker.io/fast-sandbox/agent:dev".into()],
        });
        let metrics = Metrics::new();
        let ops = Ops::default();
        ops.registry.with(|r| metrics.register(r));
        ops.health.set_ready(true);
        let reviewer =
            Reviewer::new(index.clone(), DEFAULT_CONTROLLER_USERNAME).with_metrics(metrics.clone());
        let tls = ServerTls {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: None,
        }
        .build_with_client_ca(ClientCa::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
        for name in [APISERVER, "someone-else"] {
            client_cert(&ca, dir.path(), name);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handler = Arc::new(Webhook::new(
            reviewer,
            metrics.clone(),
            Some(AllowedNames::new([APISERVER])),
        ));
        tokio::spawn(serve(listener, Some(tls), ops.clone(), handler, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            dir,
            ca,
            index,
            metrics,
            ops,
            _stop: stop,
        }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    async fn connect(&self, alpn: &[u8]) -> (Conn, CertificateDer<'static>) {
        self.connect_as(alpn, Some(APISERVER))
            .await
            .expect("TLS handshake verifying our CA")
    }

    async fn connect_as(
        &self,
        alpn: &[u8],
        who: Option<&str>,
    ) -> std::io::Result<(Conn, CertificateDer<'static>)> {
        let dir = self.dir.path();
        let identity = who.map(|w| (dir.join(format!("{w}.crt")), dir.join(format!("{w}.key"))));
        let identity = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        let mut config = (*client_config(&self.ca_path(), identity).unwrap()).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
            .await?;
        // TLS 1.3 reports a refused client certificate on the first read.
        use tokio::io::AsyncReadExt;
        let mut probe = [0u8; 0];
        tokio::time::timeout(Duration::from_millis(50), tls.read(&mut probe))
            .await
            .unwrap_or(Ok(0))?;
        let served = tls.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned();
        let io = TokioIo::new(tls);
        let conn = if alpn == b"h2" {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Conn::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Conn::H1(send)
        };
        Ok((conn, served))
    }
}

fn client_cert(ca: &Authority, dir: &Path, name: &str) {
    let leaf = ca
        .issue(&LeafSpec {
            secret_name: name.into(),
            common_name: name.into(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            usage: Usage::Client,
        })
        .unwrap();
    write_atomically(&dir.join(format!("{name}.key")), &leaf.key_pem).unwrap();
    write_atomically(&dir.join(format!("{name}.crt")), &leaf.cert_pem).unwrap();
}

fn issue(ca: &Authority, dir: &Path) {
    let leaf = ca
        .issue(&LeafSpec::for_service(
            "fast-sandbox-webhook",
            "fast-sandbox-system",
        ))
        .unwrap();
    write_atomically(&dir.join("tls.key"), &leaf.key_pem).unwrap();
    write_atomically(&dir.join("tls.crt"), &leaf.cert_pem).unwrap();
}

enum Conn {
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

impl Conn {
    async fn send(&mut self, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        let req = Request::builder()
            .method(method)
            .uri(format!("https://{SERVER_NAME}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = match self {
            Conn::H2(s) => s.send_request(req).await.unwrap(),
            Conn::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        };
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    async fn review(&mut self, body: Vec<u8>) -> Value {
        let (status, bytes) = self.send(Method::POST, "/mutate-sandbox", body).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes).unwrap()
    }
}

fn fixture(uid: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(FIXTURE).unwrap();
    v["request"]["uid"] = json!(uid);
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn create_is_bound_over_h2_with_a_base64_json_patch() {
    let server = Server::start(4).await;
    let (mut conn, _) = server.connect(b"h2").await;
    let review = conn.review(FIXTURE.as_bytes().to_vec()).await;

    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let resp = &review["response"];
    assert_eq!(resp["uid"], "3f6c1c7e-9d0a-4f7e-8f67-2f4a5b1e0c11");
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    let patch_b64 = resp["patch"]
        .as_str()
        .expect("patch must be a base64 string");
    let patch: json_patch::Patch = serde_json::from_slice(
        &serde_json::from_value::<k8s_openapi::ByteString>(json!(patch_b64))
            .unwrap()
            .0,
    )
    .unwrap();

    // Apply it the way the apiserver does, to the object it sent.
    let mut object = serde_json::from_str::<Value>(FIXTURE).unwrap()["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).unwrap();
    assert_eq!(
        object["spec"]["agentRef"],
        json!({"podName": "default-pool-agent-0", "nodeName": "node-1", "atAdmission": true})
    );
    assert_eq!(
        object["metadata"]["labels"]["sandbox.fast.io/agent"],
        "default-pool-agent-0"
    );
    assert_eq!(
        object["metadata"]["finalizers"],
        json!(["sandbox.fast.io/cleanup"])
    );
    assert!(
        object["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    assert!(object["metadata"]["annotations"]["sandbox.fast.io/bound-at"].is_string());
    assert_eq!(server.index.used("default-pool-agent-0"), 1);
    assert_eq!(server.metrics.placements(Placement::Hit), 1);

    // The operational endpoints answer on the TLS port too.
    let (status, _) = conn.send(Method::GET, "/healthz", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, text) = conn.send(Method::GET, "/metrics", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("fast_sandbox_webhook_admission_duration_seconds_count{outcome=\"Bound\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("fast_sandbox_webhook_placements_total{result=\"Hit\"} 1"),
        "{text}"
    );
    server.ops.health.set_ready(false);
    let (status, _) = conn.send(Method::GET, "/readyz", vec![]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn http1_clients_are_served_too() {
    let server = Server::start(1).await;
    let (mut conn, _) = server.connect(b"http/1.1").await;
    let first = conn.review(fixture("a")).await;
    assert!(first["response"]["patch"].is_string());
    // The only slot is taken: admitted unbound, with a warning, not hung.
    let second = conn.review(fixture("b")).await;
    assert_eq!(second["response"]["allowed"], true);
    assert!(
        second["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("no ready agent")
    );
    assert_eq!(server.metrics.placements(Placement::NoCapacity), 1);
}

#[tokio::test]
async fn malformed_requests_get_400_or_a_denial_and_the_server_lives_on() {
    let server = Server::start(4).await;
    let (mut conn, _) = server.connect(b"h2").await;
    for body in [&b"not json"[..], b"{}", b"", br#"{"request":{"uid":1}}"#] {
        let (status, text) = conn
            .send(Method::POST, "/mutate-sandbox", body.to_vec())
            .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(&text)
        );
    }
    let (status, _) = conn.send(Method::GET, "/mutate-sandbox", vec![]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = conn.send(Method::POST, "/elsewhere", vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A well-formed review of an ill-typed object: refused, naming the
    // field, so nothing unreadable is ever stored.
    let mut v: Value = serde_json::from_str(FIXTURE).unwrap();
    v["request"]["object"]["spec"]["command"] = json!("not-a-list");
    let review = conn.review(serde_json::to_vec(&v).unwrap()).await;
    assert_eq!(review["response"]["allowed"], false);
    assert_eq!(
        review["response"]["uid"],
        "3f6c1c7e-9d0a-4f7e-8f67-2f4a5b1e0c11"
    );
    let message = review["response"]["status"]["message"].as_str().unwrap();
    assert!(message.starts_with("spec.command: "), "{message}");
    assert!(review["response"].get("patch").is_none(), "{review}");

    // Still serving.
    let review = conn.review(fixture("after")).await;
    assert_eq!(review["response"]["allowed"], true);
}

#[tokio::test]
async fn concurrent_admissions_never_overbook() {
    let slots = 12;
    let server = Arc::new(Server::start(slots).await);
    let mut tasks = Vec::new();
    for c in 0..4 {
        let (conn, _) = server.connect(b"h2").await;
        let Conn::H2(send) = conn else { unreachable!() };
        for i in 0..20 {
            let mut conn = Conn::H2(send.clone());
            tasks.push(tokio::spawn(async move {
                let review = conn.review(fixture(&format!("{c}-{i}"))).await;
                assert_eq!(review["response"]["allowed"], true);
                review["response"]["warnings"].is_null()
            }));
        }
    }
    let mut bound = 0;
    for t in tasks {
        if t.await.unwrap() {
            bound += 1;
        }
    }
    assert_eq!(bound, slots);
    assert_eq!(server.index.used("default-pool-agent-0"), slots);
}

#[tokio::test]
async fn only_the_apiserver_is_answered_and_forgeries_reserve_nothing() {
    let server = Server::start(4).await;
    // No client certificate: the handshake itself fails.
    assert!(
        server.connect_as(b"h2", None).await.is_err(),
        "a caller without a client certificate must not get through TLS"
    );
    // A certificate of our CA but another name: a clear 403.
    let (mut conn, _) = server
        .connect_as(b"h2", Some("someone-else"))
        .await
        .expect("a certificate of the trusted CA passes the handshake");
    let (status, text) = conn
        .send(Method::POST, "/mutate-sandbox", fixture("forged"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("someone-else") && text.contains(APISERVER),
        "{text}"
    );
    assert_eq!(server.index.used("default-pool-agent-0"), 0);
    // A certificate of another CA: refused in the handshake.
    let other = Authority::generate().unwrap();
    client_cert(
        &other,
        server.dir.path(),
        "kube-apiserver-webhook-client-other",
    );
    std::fs::copy(
        server
            .dir
            .path()
            .join("kube-apiserver-webhook-client-other.crt"),
        server.dir.path().join("impostor.crt"),
    )
    .unwrap();
    std::fs::copy(
        server
            .dir
            .path()
            .join("kube-apiserver-webhook-client-other.key"),
        server.dir.path().join("impostor.key"),
    )
    .unwrap();
    assert!(server.connect_as(b"h2", Some("impostor")).await.is_err());
}

#[tokio::test]
async fn rotated_certificate_is_served_without_restart() {
    let server = Server::start(4).await;
    let (_, before) = server.connect(b"h2").await;
    issue(&server.ca, server.dir.path());
    let rotated = fast_sandbox_server::tls::read_certs(&server.dir.path().join("tls.crt")).unwrap()
        [0]
    .clone();
    assert_ne!(before, rotated);
    // The server re-checks its files at most once a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (mut conn, served) = server.connect(b"h2").await;
        if served == rotated {
            let review = conn.review(fixture("rotated")).await;
            assert_eq!(review["response"]["allowed"], true);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificate was not served within 10s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
