//! Certificates for Fast Sandbox: one CA, and from it the serving
//! certificates of the webhook, the scheduler extender, the access server
//! and the agents, and the client certificates agents accept (the
//! controller's and the access server's, by name).
//!
//! - [`authority`]: the CA, generated once and reused.
//! - [`leaf`]: what each certificate must say, and whether an existing one
//!   still does (renewal).
//! - [`store`]: where certificates live: Kubernetes Secrets, or files for
//!   local use.
//! - [`reconcile`]: makes a store hold valid certificates, creating or
//!   renewing only what is needed.
//! - [`ca_bundle`]: writes the CA into the webhook configurations and the
//!   access server's APIService.
#![forbid(unsafe_code)]
#![deny(missing_docs, rust_2018_idioms)]

pub mod authority;
pub mod ca_bundle;
pub mod leaf;
pub mod reconcile;
pub mod store;

/// Why certificates could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or key.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM or DER object could not be parsed.
    #[error("cannot parse {what}: {message}")]
    Parse {
        /// What was being read.
        what: String,
        /// The parser's complaint.
        message: String,
    },
}
