//! `kubectl-sandbox`, the kubectl plugin of Fast Sandbox, as a library, so
//! tests and tools run the same code as `kubectl sandbox`.
//!
//! - [`cluster`]: the Kubernetes client and namespace from a kubeconfig.
//! - [`logs`](mod@logs): a sandbox's stdout or stderr through the access
//!   API (`subresources.sandbox.fast.io`), under the caller's RBAC.
#![forbid(unsafe_code)]
#![deny(missing_docs, rust_2018_idioms)]

pub mod cluster;
pub mod logs;

pub use logs::{LogOptions, LogStream, LogsError, logs};
