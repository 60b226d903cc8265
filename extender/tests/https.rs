//! The extender served for real: TLS with a CA-signed certificate over
//! loopback, called the way kube-scheduler calls it (POST `<prefix>/filter`
//! and `<prefix>/prioritize`, HTTP/2 or HTTP/1.1, presenting the
//! scheduler's client certificate), callers that are not the scheduler
//! refused, plus the operational endpoints on the same port.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use fast_sandbox_extender::Extender;
use fast_sandbox_extender::metrics::Metrics;
use fast_sandbox_extender::routes::Routes;
use fast_sandbox_server::client_auth::{AllowedNames, ClientCa};
use fast_sandbox_server::{Ops, serve, tls};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

const SERVER_NAME: &str = "fast-sandbox-extender.fast-sandbox-system.svc";
const AGENT: &str = "docker.io/fast-sandbox/agent:dev";
const WARM: &str = "docker.io/fast-sandbox/busybox:dev";

const SCHEDULER: &str = "system:kube-scheduler";

/// Writes a CA, a serving certificate for the extender's Service names and
/// client certificates for the scheduler and for someone else.
fn certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "fast-sandbox-ca");
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec![
        "fast-sandbox-extender".to_string(),
        "fast-sandbox-extender.fast-sandbox-system".to_string(),
        SERVER_NAME.to_string(),
    ])
    .unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("10.96.0.50".parse().unwrap()));
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let (c, k, a) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::write(&a, issuer.pem()).unwrap();
    for who in [SCHEDULER, "someone-else"] {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, who);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{who}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{who}.key")), key.serialize_pem()).unwrap();
    }
    (c, k, a)
}

struct Server {
    addr: SocketAddr,
    ca: PathBuf,
    dir: PathBuf,
    ops: Ops,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = certs(dir.path());
    let config = tls::ServerTls {
        cert,
        key,
        client_ca: None,
    }
    .build_with_client_ca(ClientCa::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
    .unwrap();
    let nodes = vec![
        node("n-warm", &[(&[AGENT], 20 * MIB), (&[WARM], MIB)]),
        node("n-cold", &[(&[AGENT], 20 * MIB)]),
        node(
            "n-noagent",
            &[(&["docker.io/library/postgres:16"], 400 * MIB)],
        ),
    ];
    let ops = Ops::default();
    let extender = Extender::new(
        index(&nodes, &[WARM]),
        Some(Metrics::register(&ops.registry)),
    );
    ops.health.set_ready(true);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        Some(config),
        ops.clone(),
        Arc::new(Routes::new(extender, Some(AllowedNames::new([SCHEDULER])))),
        async move {
            let _ = rx.await;
        },
    ));
    Server {
        addr,
        ca,
        dir: dir.path().to_path_buf(),
        ops,
        _stop: tx,
        _dir: dir,
    }
}

/// One request as the scheduler over a fresh TLS connection negotiating
/// `alpn`.
async fn call(
    server: &Server,
    alpn: &[u8],
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Bytes) {
    call_as(server, SCHEDULER, alpn, method, path, body).await
}

async fn call_as(
    server: &Server,
    who: &str,
    alpn: &[u8],
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Bytes) {
    let fut = async {
        let (cert, key) = (
            server.dir.join(format!("{who}.crt")),
            server.dir.join(format!("{who}.key")),
        );
        let mut config = (*tls::client_config(&server.ca, Some((&cert, &key))).unwrap()).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let stream = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
            .await
            .unwrap();
        let io = TokioIo::new(stream);
        let req = Request::builder()
            .method(method)
            .uri(format!("https://{SERVER_NAME}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = if alpn == b"h2" {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        };
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("extender did not answer within 10 s")
}

#[tokio::test]
async fn scheduler_calls_over_tls() {
    let server = start().await;
    let agent = pod(
        "agent-1",
        agent_labels("default-pool"),
        "fast-sandbox/agent:dev",
    );
    let all = ["n-warm", "n-cold", "n-noagent"];

    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let (status, body) = call(
            &server,
            alpn,
            Method::POST,
            "/filter",
            names_args(&agent, &all),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["NodeNames"], json!(["n-warm", "n-cold"]));
        assert!(v["FailedAndUnresolvableNodes"]["n-noagent"].is_string());

        let (status, body) = call(
            &server,
            alpn,
            Method::POST,
            "/prioritize",
            names_args(&agent, &all),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[0], json!({"Host": "n-warm", "Score": 10}), "{v}");
        assert!(v[1]["Score"].as_i64().unwrap() < 10, "{v}");
    }

    let web = pod("web", json!({"app": "web"}), "nginx");
    let (_, body) = call(
        &server,
        b"h2",
        Method::POST,
        "/prioritize",
        names_args(&web, &all),
    )
    .await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v.as_array().unwrap().iter().all(|h| h["Score"] == 0), "{v}");

    let (status, _) = call(
        &server,
        b"h2",
        Method::POST,
        "/filter",
        b"not json".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&server, b"h2", Method::GET, "/filter", Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = call(&server, b"h2", Method::POST, "/bind", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn callers_other_than_the_scheduler_are_refused() {
    let server = start().await;
    let agent = pod(
        "agent-1",
        agent_labels("default-pool"),
        "fast-sandbox/agent:dev",
    );
    let (status, body) = call_as(
        &server,
        "someone-else",
        b"h2",
        Method::POST,
        "/prioritize",
        names_args(&agent, &["n-warm"]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("someone-else") && text.contains(SCHEDULER),
        "{text}"
    );
    // Without any client certificate the handshake itself fails.
    let mut config = (*tls::client_config(&server.ca, None).unwrap()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let refused = async {
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
            .await?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await?;
        let mut buf = [0u8; 16];
        tls.read(&mut buf).await
    };
    assert!(
        refused.await.is_err(),
        "a caller without a client certificate must not get an answer"
    );
}

#[tokio::test]
async fn ops_endpoints_on_the_tls_port() {
    let server = start().await;
    let (status, _) = call(&server, b"h2", Method::GET, "/healthz", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&server, b"h2", Method::GET, "/readyz", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    server.ops.health.set_ready(false);
    let (status, _) = call(&server, b"h2", Method::GET, "/readyz", Vec::new()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let agent = pod(
        "agent-1",
        agent_labels("default-pool"),
        "fast-sandbox/agent:dev",
    );
    call(
        &server,
        b"h2",
        Method::POST,
        "/filter",
        names_args(&agent, &["n-noagent"]),
    )
    .await;
    call(
        &server,
        b"h2",
        Method::POST,
        "/prioritize",
        names_args(&agent, &["n-warm"]),
    )
    .await;
    let (status, body) = call(&server, b"h2", Method::GET, "/metrics", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    for needle in [
        r#"fast_sandbox_extender_request_duration_seconds_count{verb="filter"} 1"#,
        r#"fast_sandbox_extender_request_duration_seconds_count{verb="prioritize"} 1"#,
        r#"fast_sandbox_extender_requests_total{verb="filter",pod="agent",outcome="ok"} 1"#,
        r#"fast_sandbox_extender_filtered_nodes_total{reason="image_missing"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}
