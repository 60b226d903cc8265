//! The operational endpoints every server answers: `/healthz`, `/readyz`
//! and `/metrics`, plus the flags that configure them.

use std::net::SocketAddr;

use http::{Method, Response, StatusCode, header};

use crate::body::{self, Body};
use crate::health::Health;
use crate::metrics::Registry;
use crate::telemetry::LogFormat;

/// Path of the liveness endpoint.
pub const HEALTHZ: &str = "/healthz";
/// Path of the readiness endpoint.
pub const READYZ: &str = "/readyz";
/// Path of the Prometheus endpoint.
pub const METRICS: &str = "/metrics";

/// Flags shared by every binary (flatten into its clap struct).
#[derive(Clone, Debug, clap::Args)]
pub struct OpsArgs {
    /// Plain-HTTP address for /healthz, /readyz and /metrics (probes and
    /// Prometheus need no certificate).
    #[arg(long, env = "FAST_SANDBOX_OPS_LISTEN", default_value = "0.0.0.0:9090")]
    pub ops_listen: SocketAddr,
    /// Log format: text or json. The RUST_LOG variable sets the filter.
    #[arg(long, env = "FAST_SANDBOX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// What the operational endpoints report on.
#[derive(Clone, Debug, Default)]
pub struct Ops {
    /// Readiness.
    pub health: Health,
    /// Metrics.
    pub registry: Registry,
}

impl Ops {
    /// Answers an operational path, or `None` for any other request.
    pub fn answer(&self, method: &Method, path: &str) -> Option<Response<Body>> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        match path {
            HEALTHZ => Some(body::text(StatusCode::OK, "ok")),
            READYZ if self.health.is_ready() => Some(body::text(StatusCode::OK, "ready")),
            READYZ => Some(body::text(StatusCode::SERVICE_UNAVAILABLE, "not ready")),
            METRICS => {
                let mut r = body::text(StatusCode::OK, self.registry.render());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                Some(r)
            }
            _ => None,
        }
    }
}
