//! Webhook benchmark: memory of a large placement index, and the admission
//! round trip over HTTPS on loopback at a fixed request rate (open loop, so
//! a slow answer does not slow the offered load).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use fast_sandbox_bench_webhook::{LARGE, Shape, index};
use fast_sandbox_certs::authority::Authority;
use fast_sandbox_certs::leaf::LeafSpec;
use fast_sandbox_certs::store::write_atomically;
use fast_sandbox_server::client_auth::{AllowedNames, ClientCa};
use fast_sandbox_server::tls::{ServerTls, client_config};
use fast_sandbox_server::{Ops, serve};
use fast_sandbox_webhook::metrics::Metrics;
use fast_sandbox_webhook::review::{DEFAULT_CONTROLLER_USERNAME, Reviewer};
use fast_sandbox_webhook::server::Webhook;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

const SERVER_NAME: &str = "fast-sandbox-webhook.fast-sandbox-system.svc";

/// Measure the webhook.
#[derive(Parser, Debug)]
struct Args {
    /// Offered admission requests per second.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn review(uid: &str, image: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "sandbox.fast.io", "version": "v1alpha1", "kind": "Sandbox"},
            "resource": {"group": "sandbox.fast.io", "version": "v1alpha1", "resource": "sandboxes"},
            "requestKind": {"group": "sandbox.fast.io", "version": "v1alpha1", "kind": "Sandbox"},
            "requestResource": {"group": "sandbox.fast.io", "version": "v1alpha1", "resource": "sandboxes"},
            "name": format!("sb-{uid}"),
            "namespace": "bench",
            "operation": "CREATE",
            "userInfo": {"username": "bench", "groups": ["system:authenticated"]},
            "object": {
                "apiVersion": "sandbox.fast.io/v1alpha1",
                "kind": "Sandbox",
                "metadata": {"name": format!("sb-{uid}"), "namespace": "bench", "creationTimestamp": null},
                "spec": {"image": image, "poolRef": "pool", "command": ["/bin/sleep", "100"]}
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    }))
    .expect("review serialises")
}

/// The apiserver's webhook client identity.
const APISERVER: &str = "kube-apiserver-webhook-client";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();

    // Memory of the large index.
    let before = rss_kib();
    let started = Instant::now();
    let idx = index(LARGE);
    let built = started.elapsed();
    let after = rss_kib();
    println!(
        "index: {} agents, {} image entries: built in {:?}, RSS +{:.1} MiB",
        LARGE.agents,
        LARGE.agents * LARGE.images_per_agent,
        built,
        (after.saturating_sub(before)) as f64 / 1024.0
    );
    drop(idx);

    // Admission server with a realistic pool: enough slots for every request.
    let shape = Shape {
        agents: 200,
        images_per_agent: 10,
        distinct_images: 100,
        slots: 64,
    };
    let idx = Arc::new(index(shape));
    let dir = tempfile::tempdir()?;
    let ca = Authority::generate()?;
    let leaf = ca.issue(&LeafSpec::for_service(
        "fast-sandbox-webhook",
        "fast-sandbox-system",
    ))?;
    write_atomically(&dir.path().join("ca.crt"), ca.cert_pem())?;
    write_atomically(&dir.path().join("tls.key"), &leaf.key_pem)?;
    write_atomically(&dir.path().join("tls.crt"), &leaf.cert_pem)?;
    // The apiserver's webhook client certificate, checked as in production.
    let apiserver = ca.issue(&LeafSpec::client(APISERVER, APISERVER))?;
    write_atomically(&dir.path().join("client.key"), &apiserver.key_pem)?;
    write_atomically(&dir.path().join("client.crt"), &apiserver.cert_pem)?;
    let tls = ServerTls {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        client_ca: None,
    }
    .build_with_client_ca(ClientCa::from_pem(ca.cert_pem().as_bytes())?)?;
    let metrics = Metrics::new();
    let reviewer =
        Reviewer::new(idx.clone(), DEFAULT_CONTROLLER_USERNAME).with_metrics(metrics.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        Some(tls),
        Ops::default(),
        Arc::new(Webhook::new(
            reviewer,
            metrics,
            Some(AllowedNames::new([APISERVER])),
        )),
        async {
            let _ = stopped.await;
        },
    ));

    // One HTTP/2 connection, as kube-apiserver keeps to a webhook.
    let config = client_config(
        &dir.path().join("ca.crt"),
        Some((
            &dir.path().join("client.crt"),
            &dir.path().join("client.key"),
        )),
    )?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(config)
        .connect(ServerName::try_from(SERVER_NAME)?, tcp)
        .await
        .context("TLS handshake")?;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(conn);

    let total = args.rate * args.seconds;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tick.tick().await;
        let mut send = send.clone();
        let body = review(
            &format!("req-{i}"),
            &fast_sandbox_bench_webhook::image((i % 120) as usize),
        );
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let req = Request::post(format!("https://{SERVER_NAME}/mutate-sandbox"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .expect("request builds");
            let resp = send.send_request(req).await.expect("request answered");
            let ok = resp.status().is_success();
            let body = resp
                .into_body()
                .collect()
                .await
                .expect("body read")
                .to_bytes();
            let bound = ok && !body.windows(10).any(|w| w == b"\"warnings\"");
            (t.elapsed(), bound)
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut bound = 0;
    for t in tasks {
        let (d, b) = t.await?;
        latencies.push(d);
        bound += usize::from(b);
    }
    latencies.sort();
    let _ = stop.send(());
    println!(
        "admission over HTTPS (h2, loopback) at {} req/s for {} s: n={} bound={} p50={:?} p90={:?} p99={:?} max={:?}",
        args.rate,
        args.seconds,
        latencies.len(),
        bound,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
    Ok(())
}
