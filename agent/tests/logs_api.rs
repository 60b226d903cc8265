//! The read-only logs API over real plain HTTP/1.1, without containerd: an
//! agent whose containerd socket only accepts connections (no call reaches
//! it), so these tests run everywhere. Reading real logs through this API is
//! covered by `sandboxes.rs` against a real containerd.

mod support;

use std::sync::Arc;
use std::time::Duration;

use fast_sandbox_agent::metrics::Metrics;
use fast_sandbox_agent::runtime::Containerd;
use fast_sandbox_agent::{Agent, Config};
use fast_sandbox_api::agent::{ApiError, ErrorCode, logs_path};
use fast_sandbox_server::{Ops, Registry};
use http::{Method, StatusCode, header};
use support::{body_text, plain_request, serve_logs_api};
use tokio::sync::watch;

/// An agent with no sandboxes, served by the logs API only.
struct LogsOnly {
    addr: std::net::SocketAddr,
    _dirs: tempfile::TempDir,
    shutdown: watch::Sender<bool>,
}

impl LogsOnly {
    async fn start() -> Self {
        let dirs = tempfile::tempdir().unwrap();
        // A socket that accepts and holds connections: enough for the
        // client to connect; nothing in these tests calls containerd.
        let socket = dirs.path().join("containerd.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let cd = Containerd::connect(&socket, "logs-api-test", "overlayfs", "runc")
            .await
            .unwrap();
        let registry = Registry::default();
        let ops = Ops {
            health: Default::default(),
            registry: registry.clone(),
        };
        let metrics = Metrics::register(&registry);
        let cfg = Config {
            pod_name: "agent-logs-api".into(),
            pod_uid: "logs-api".into(),
            node_name: "test-node".into(),
            slots: 1,
            state_dir: dirs.path().join("state"),
            cgroup_parent: "/fast-sandbox-agent-test".into(),
            shim_group: true,
            warm_snapshots: 0,
            warm_images: 0,
            default_grace: Duration::from_secs(1),
            proc_root: "/proc".into(),
            advertise: None,
            max_upload_bytes: fast_sandbox_agent::agent::DEFAULT_MAX_UPLOAD_BYTES,
        };
        let agent: Arc<Agent> = Agent::new(cfg, cd, metrics.clone(), ops.health.clone()).unwrap();
        let (shutdown, rx) = watch::channel(false);
        let addr = serve_logs_api(agent, metrics, ops, &rx).await;
        Self {
            addr,
            _dirs: dirs,
            shutdown,
        }
    }

    /// Sends a request; returns the status and the error body.
    async fn error(&self, method: Method, path: &str) -> (StatusCode, ApiError) {
        let resp = plain_request(self.addr, method, path).await;
        let status = resp.status();
        assert_eq!(
            resp.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        let text = body_text(resp).await;
        let err = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        (status, err)
    }
}

impl Drop for LogsOnly {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

#[tokio::test]
async fn logs_of_an_unknown_sandbox_are_a_json_404_naming_it() {
    let a = LogsOnly::start().await;
    for query in ["", "?follow=true", "?stream=stderr&follow=true"] {
        let path = format!("{}{query}", logs_path("no-such-uid"));
        let (status, err) = a.error(Method::GET, &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(err.code, ErrorCode::NotFound);
        assert!(err.message.contains("no-such-uid"), "{err:?}");
    }
}

#[tokio::test]
async fn a_bad_stream_is_refused_naming_the_parameter() {
    let a = LogsOnly::start().await;
    let path = format!("{}?stream=stdin", logs_path("some-uid"));
    let (status, err) = a.error(Method::GET, &path).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert_eq!(err.field.as_deref(), Some("stream"));
}

#[tokio::test]
async fn nothing_but_logs_is_served() {
    let a = LogsOnly::start().await;
    for (method, path) in [
        (Method::POST, "/v1/sandboxes".to_string()),
        (Method::GET, "/v1/sandboxes".to_string()),
        (Method::GET, "/v1/sandboxes/some-uid".to_string()),
        (Method::DELETE, "/v1/sandboxes/some-uid".to_string()),
        (Method::POST, logs_path("some-uid")),
        (Method::DELETE, logs_path("some-uid")),
        (Method::GET, "/v1/events".to_string()),
        (Method::GET, "/v1/images".to_string()),
        (Method::GET, "/v1/info".to_string()),
        (Method::POST, "/v1/janitor".to_string()),
        (Method::GET, "/".to_string()),
    ] {
        let (status, err) = a.error(method.clone(), &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(err.code, ErrorCode::NotFound, "{method} {path}");
        assert!(err.message.contains(&path), "{err:?}");
    }
}
