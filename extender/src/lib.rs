//! The Fast Sandbox scheduler extender: kube-scheduler calls it over
//! HTTP(S) with its `filter` and `prioritize` verbs so that agent pods land
//! on nodes that already hold the images their pool runs, and sandboxes
//! then start with zero pulls. Every other pod gets a neutral answer.
//!
//! * [`protocol`]: the extender wire format, exactly as kube-scheduler
//!   encodes it.
//! * [`agent_pod`]: which pods are agent pods, and of which pool.
//! * [`index`]: the watch-fed view of nodes, pools, agents and sandboxes.
//! * [`scoring`]: the scoring rule as pure arithmetic.
//! * [`verbs`]: request bytes in, answer bytes out.
//! * [`routes`]: the HTTP handler; [`watch`]: the watches feeding the index.
#![forbid(unsafe_code)]
#![deny(missing_docs, rust_2018_idioms)]

pub mod agent_pod;
pub mod images;
pub mod index;
pub mod metrics;
pub mod protocol;
pub mod routes;
pub mod scoring;
pub mod verbs;
pub mod watch;

pub use index::Index;
pub use scoring::ScoringConfig;
pub use verbs::Extender;
