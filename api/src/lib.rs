//! The public API of Fast Sandbox: the `Sandbox` and `SandboxPool` custom
//! resources (group `sandbox.fast.io`, version `v1alpha1`), the names every
//! component agrees on, the pure validation shared by admission and the
//! agent, image reference normalisation, and the agent's `/v1` wire types (exec
//! frames and files included).
//!
//! This crate does no I/O, so every component and test can depend on it.
#![forbid(unsafe_code)]
#![deny(missing_docs, rust_2018_idioms)]
// kube-derive repeats `printcolumn(...)` attributes by design.
#![allow(clippy::duplicated_attributes)]

pub mod agent;
pub mod crd;
pub mod exec;
pub mod files;
pub mod image;
pub mod network;
pub mod policy;
pub mod pool;
pub mod quantity;
pub mod resources;
pub mod sandbox;
pub mod schema;
pub mod validation;
pub mod wellknown;

pub use network::{Ipv4Cidr, NetworkMode, SandboxNetwork};
pub use pool::{PoolCapacity, SandboxPool, SandboxPoolSpec, SandboxPoolStatus};
pub use sandbox::{
    AgentRef, EnvVar, ExposedPort, FailurePolicy, PortProtocol, Sandbox, SandboxEndpoint,
    SandboxPhase, SandboxResources, SandboxSpec, SandboxStatus,
};
