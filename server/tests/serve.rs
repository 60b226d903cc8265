//! Real HTTPS against the shared server: ops endpoints, HTTP/2 and
//! HTTP/1.1, certificate rotation without restart, mutual TLS.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use fast_sandbox_server::{Handler, Ops, Peer, body, serve, tls};
use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

struct Echo;

impl Handler for Echo {
    fn call(&self, req: Request<Incoming>, peer: Peer) -> BoxFuture<'static, Response<body::Body>> {
        let msg = format!(
            "{} {} cert={}",
            req.method(),
            req.uri().path(),
            peer.client_cert.is_some()
        );
        Box::pin(async move { body::text(StatusCode::OK, msg) })
    }
}

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

    fn leaf(&self, dir: &Path, name: &str, cn: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn write(&self, dir: &Path) -> std::path::PathBuf {
        let p = dir.join("ca.crt");
        std::fs::write(&p, self.issuer.pem()).unwrap();
        p
    }
}

async fn start(
    config: Arc<rustls::ServerConfig>,
    ops: Ops,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        Some(config),
        ops,
        Arc::new(Echo),
        async move {
            let _ = rx.await;
        },
    ));
    (addr, tx)
}

/// One request over a fresh TLS connection; returns (status, body, ALPN,
/// server leaf certificate).
async fn get(
    addr: std::net::SocketAddr,
    client: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(StatusCode, String, Vec<u8>, Vec<u8>), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(client)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let alpn = tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let req = Request::get(format!("https://localhost{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if alpn == b"h2" {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((
        status,
        String::from_utf8_lossy(&body).into_owned(),
        alpn,
        leaf,
    ))
}

#[tokio::test]
async fn ops_and_handler_over_h2_and_http1() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test-ca");
    let ca_path = ca.write(dir.path());
    let (cert, key) = ca.leaf(dir.path(), "server", "server");
    let config = tls::ServerTls {
        cert,
        key,
        client_ca: None,
    }
    .build()
    .unwrap();
    let ops = Ops::default();
    let (addr, _stop) = start(config, ops.clone()).await;

    let h2 = tls::client_config(&ca_path, None).unwrap();
    let (s, b, alpn, _) = get(addr, h2.clone(), "/readyz").await.unwrap();
    assert_eq!(
        (s, alpn.as_slice()),
        (StatusCode::SERVICE_UNAVAILABLE, &b"h2"[..]),
        "{b}"
    );
    ops.health.set_ready(true);
    assert_eq!(
        get(addr, h2.clone(), "/readyz").await.unwrap().0,
        StatusCode::OK
    );
    assert_eq!(
        get(addr, h2.clone(), "/healthz").await.unwrap().0,
        StatusCode::OK
    );
    let (s, b, _, _) = get(addr, h2.clone(), "/metrics").await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert!(b.contains("# EOF"), "{b}");
    let (_, b, _, _) = get(addr, h2, "/v1/thing").await.unwrap();
    assert_eq!(b, "GET /v1/thing cert=false");

    let mut http1 = (*tls::client_config(&ca_path, None).unwrap()).clone();
    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (s, b, alpn, _) = get(addr, Arc::new(http1), "/x").await.unwrap();
    assert_eq!(
        (s, b.as_str(), alpn.as_slice()),
        (StatusCode::OK, "GET /x cert=false", &b"http/1.1"[..])
    );
}

#[tokio::test]
async fn rotated_certificate_is_served_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test-ca");
    let ca_path = ca.write(dir.path());
    let (cert, key) = ca.leaf(dir.path(), "server", "first");
    let resolver = Arc::new(tls::ReloadingCert::new(&cert, &key).unwrap());
    let config = tls::ServerTls {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: None,
    }
    .build_with(resolver.clone())
    .unwrap();
    let (addr, _stop) = start(config, Ops::default()).await;
    // No session resumption: a resumed session would report the old
    // certificate without a new handshake.
    let mut client = (*tls::client_config(&ca_path, None).unwrap()).clone();
    client.resumption = rustls::client::Resumption::disabled();
    let client = Arc::new(client);
    let (_, _, _, first) = get(addr, client.clone(), "/healthz").await.unwrap();

    // Rotate: write a new pair over the old files, as a Secret update does.
    let (c2, k2) = ca.leaf(dir.path(), "next", "second");
    std::fs::copy(&k2, &key).unwrap();
    std::fs::copy(&c2, &cert).unwrap();
    let mtime = std::fs::metadata(&cert).unwrap().modified().unwrap();
    let file = std::fs::File::options().write(true).open(&cert).unwrap();
    file.set_modified(mtime + std::time::Duration::from_secs(5))
        .unwrap();
    resolver.reload_now();

    let (s, _, _, second) = get(addr, client.clone(), "/healthz").await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_ne!(first, second, "the rotated certificate must be served");

    // A broken rotation keeps the last good certificate.
    std::fs::write(&cert, "garbage").unwrap();
    let file = std::fs::File::options().write(true).open(&cert).unwrap();
    file.set_modified(mtime + std::time::Duration::from_secs(10))
        .unwrap();
    resolver.reload_now();
    let (s, _, _, third) = get(addr, client, "/healthz").await.unwrap();
    assert_eq!((s, third), (StatusCode::OK, second));
}

#[tokio::test]
async fn mutual_tls_refuses_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("fast-sandbox-ca");
    let ca_path = ca.write(dir.path());
    let (cert, key) = ca.leaf(dir.path(), "server", "agent");
    let config = tls::ServerTls {
        cert,
        key,
        client_ca: Some(ca_path.clone()),
    }
    .build()
    .unwrap();
    let (addr, _stop) = start(config, Ops::default()).await;

    let (cc, ck) = ca.leaf(dir.path(), "client", "fast-sandbox-controller");
    let good = tls::client_config(&ca_path, Some((&cc, &ck))).unwrap();
    let (s, b, _, _) = get(addr, good, "/v1/sandboxes").await.unwrap();
    assert_eq!(
        (s, b.as_str()),
        (StatusCode::OK, "GET /v1/sandboxes cert=true")
    );

    let anonymous = tls::client_config(&ca_path, None).unwrap();
    assert!(
        get(addr, anonymous, "/v1/sandboxes").await.is_err(),
        "no client certificate must be refused"
    );

    let other = Ca::new("other-ca");
    let (oc, ok) = other.leaf(dir.path(), "stranger", "stranger");
    let stranger = tls::client_config(&ca_path, Some((&oc, &ok))).unwrap();
    assert!(
        get(addr, stranger, "/v1/sandboxes").await.is_err(),
        "a certificate from another CA must be refused"
    );
}
