//! What every Fast Sandbox component needs from the Kubernetes API beyond
//! kube-rs:
//!
//! - [`decode`]: watches that decode each object on its own, so one object
//!   our types cannot read never stops a watch, a cache or a component.
//! - [`cluster_trust`]: the cluster's client CA and front-proxy settings
//!   from `kube-system/extension-apiserver-authentication`, kept current:
//!   the webhook and the extender trust only the apiserver's and the
//!   scheduler's client certificates, the access server only the front
//!   proxy.
//! - [`access_review`]: SubjectAccessReview for users the apiserver
//!   authenticated, cached briefly.
//! - [`policy`]: the operator's policy, kept current from its ConfigMap.
#![forbid(unsafe_code)]
#![deny(missing_docs, rust_2018_idioms)]

pub mod access_review;
pub mod cluster_trust;
pub mod decode;
pub mod policy;
