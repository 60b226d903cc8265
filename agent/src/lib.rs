//! Fast Sandbox agent: the data plane. Runs in a privileged pod on each
//! node and starts sandboxes as containers in the node's own containerd,
//! from images the node already holds, behind a mutual-TLS HTTPS API.
//!
//! - [`runtime`]: the containerd calls a sandbox's life needs.
//! - [`image`]: image resolution (index, manifest, config, chain ID), cached.
//! - [`spec`] and [`seccomp`]: the OCI runtime spec of a sandbox.
//! - [`cgroup`]: sandbox cgroups nested under the agent's own.
//! - [`state`]: the sandbox table and slots.
//! - [`events`]: the event stream clients follow.
//! - [`logs`]: stdout/stderr files and following them.
//! - [`exec`]: commands exec'd into running sandboxes; [`fifo`]: their
//!   stdio FIFOs.
//! - [`rootfs`]: files inside a running sandbox, resolved by the kernel
//!   inside its root; [`archive`]: tar streams of trees, each way.
//! - [`warm`]: snapshots prepared ahead for hot images.
//! - [`stock`] and [`prestarted`]: pre-started sandboxes (task running,
//!   our init waiting for its launch message) kept per warm image.
//! - [`janitor`]: which leftovers of gone agents the node janitor collects.
//! - [`agent`]: the agent itself; [`api`]: its HTTP API, served only to the
//!   controller and the access server; [`client`]: a client of that API
//!   (tests, benchmarks, tools).
#![forbid(unsafe_code)]
#![deny(missing_docs, rust_2018_idioms)]

pub mod agent;
pub mod api;
pub mod archive;
pub mod cgroup;
pub mod client;
pub mod egress;
pub mod error;
pub mod events;
pub mod exec;
pub mod fifo;
pub mod image;
pub mod janitor;
pub mod layer;
pub mod logs;
pub mod metrics;
pub mod pin;
pub mod ports;
pub mod prestarted;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod shim_gate;
pub mod spec;
pub mod state;
pub mod stock;
pub mod userns;
pub mod warm;

pub use agent::{Agent, Config};
pub use error::{Error, Result};
