//! The admission webhook of Fast Sandbox: the scheduler of sandboxes.
//!
//! kube-apiserver calls it when a Sandbox is created; it validates what the
//! CRD schema cannot and answers with a JSON patch that binds the sandbox to a
//! warm agent, before the object is stored. The pieces:
//!
//! - placement (the `fast-sandbox-placement` crate): the in-memory index of
//!   agents, slots and image caches and the decision; the controller uses
//!   the same implementation to re-place sandboxes.
//! - [`watch`]: feeds the index from watches on agent pods, nodes, pools and
//!   sandboxes.
//! - [`binding`]: the JSON patch that binds a sandbox (and writes its
//!   effective limits, see [`pool_defaults`]).
//! - [`review`]: the AdmissionReview envelope and wire format;
//!   [`sandbox_review`] binds and guards Sandboxes, [`pool_review`] holds
//!   SandboxPools to the operator's policy.
//! - [`server`]: the HTTPS handler for `/mutate-sandbox`.
//! - [`metrics`]: admission latency and placement hit counters.
#![forbid(unsafe_code)]
#![deny(missing_docs, rust_2018_idioms)]

pub mod binding;
pub mod metrics;
pub mod pool_defaults;
pub mod pool_review;
pub mod review;
pub mod sandbox_review;
pub mod server;
pub mod watch;
