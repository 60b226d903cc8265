//! The access server of Fast Sandbox: an aggregated API server (group
//! `subresources.sandbox.fast.io`, registered by an `APIService`) that gives
//! tenants their sandboxes' logs, exec and files through the Kubernetes API.
//!
//! Tenants never reach an agent: kube-apiserver authenticates them and
//! forwards the request here with its front-proxy certificate; this server
//! authorises the user with a SubjectAccessReview on the subresource
//! (`sandboxes/log`, `sandboxes/exec`, `sandboxes/files`, RBAC aggregated
//! into `view`, `edit` and `admin`) and
//! asks the sandbox's agent over mutual TLS, as an identity of its own that
//! agents accept by name. It keeps no state but caches: any replica serves
//! any request.
//!
//! - [`request`]: paths and query parameters.
//! - [`discovery`]: the group's discovery documents.
//! - [`server`]: authentication, authorisation, routing.
//! - [`resolve`]: sandbox → agent, one warm connection per agent.
//! - [`logs`]: the `log` subresource; [`exec`]: `exec` over WebSocket in
//!   the Kubernetes streaming protocol; [`files`]: `files`.
//! - [`status`]: errors as `metav1.Status`.
//! - [`metrics`]: request counts and latencies.
#![forbid(unsafe_code)]
#![deny(missing_docs, rust_2018_idioms)]

pub mod discovery;
pub mod exec;
pub mod files;
pub mod logs;
pub mod metrics;
pub mod request;
pub mod resolve;
pub mod server;
pub mod status;
