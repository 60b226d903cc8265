//! `kubectl-sandbox`, the kubectl plugin of Fast Sandbox, as a library, so
//! tests, tools and programs run the same code as `kubectl sandbox`.
//!
//! - [`cluster`]: the Kubernetes client and namespace from a kubeconfig.
//! - [`access`]: paths and errors of the access API
//!   (`subresources.sandbox.fast.io`), which every command below uses
//!   under the caller's RBAC.
//! - [`logs`](mod@logs): a sandbox's stdout or stderr.
//! - [`exec`](mod@exec): a command in a running sandbox, in the Kubernetes
//!   streaming protocol; [`terminal`]: the local terminal for `-t`.
//! - [`files`]: copies in and out, no tar needed in the image.
//! - [`sandboxes`]: `ls` and `run`.
#![forbid(unsafe_code)]
#![deny(missing_docs, rust_2018_idioms)]

pub mod access;
pub mod cluster;
pub mod exec;
pub mod files;
pub mod logs;
pub mod sandboxes;
pub mod terminal;

pub use access::AccessError;
pub use logs::{LogOptions, LogStream, logs};
