//! What every Fast Sandbox server shares: HTTP/1.1 and HTTP/2 serving over
//! TLS (with certificates re-read when they rotate, and optional mutual TLS),
//! `/healthz`, `/readyz` and `/metrics` answered the same way everywhere,
//! and structured logging.
#![forbid(unsafe_code)]
#![deny(missing_docs, rust_2018_idioms)]

pub mod body;
pub mod client_auth;
pub mod flow;
pub mod health;
pub mod http;
pub mod idle_timeout;
pub mod metrics;
pub mod ops;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use body::Body;
pub use health::Health;
pub use http::{Handler, Peer, serve, serve_ops};
pub use metrics::Registry;
pub use ops::{Ops, OpsArgs};
