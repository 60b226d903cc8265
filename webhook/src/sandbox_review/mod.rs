//! Admission of Sandboxes.
//!
//! CREATE: validate what the CRD schema cannot, then bind the sandbox to an
//! agent from the placement index with a JSON patch. UPDATE: refuse changes
//! to the binding (and the labels and annotations that record it, which the
//! placement index trusts), to the pool, to the spec fields fixed at binding
//! and to the cleanup finalizer, except from the controller. Dry-run requests get the same
//! answer and reserve nothing; so do reviews from a caller not known to be
//! the apiserver.
//!
//! The CREATE path is in `create`, the UPDATE path in `update`; both guard
//! the labels and annotations that record the binding, listed here.

use fast_sandbox_api::Sandbox;
use fast_sandbox_api::wellknown::{
    ANNOTATION_BOUND_AT, ANNOTATION_RESERVATION, LABEL_AGENT, LABEL_POOL,
};
use kube::ResourceExt;
use kube::core::admission::Operation;

use crate::review::{Caller, Request, Reviewer, Verdict, allowed, typed};

mod create;
#[cfg(test)]
mod tests;
mod update;

/// Labels that record the binding, written at admission and by the
/// controller only: the placement index and `-l` selections trust them.
const BINDING_LABELS: &[&str] = &[LABEL_AGENT, LABEL_POOL];
/// Annotations that record the binding (when, and which slot reservation),
/// written at admission and by the controller only.
const BINDING_ANNOTATIONS: &[&str] = &[ANNOTATION_BOUND_AT, ANNOTATION_RESERVATION];

impl Reviewer {
    /// Reviews a Sandbox CREATE or UPDATE.
    pub(crate) async fn review_sandbox(&self, req: &Request, caller: Caller) -> Verdict {
        let new = match typed::<Sandbox>(req, req.object.as_ref(), "object") {
            Ok(n) => n,
            // The controller finalizes objects it cannot read; anyone else
            // gets the field named.
            Err(_) if self.is_controller(req) => return allowed(&req.uid),
            Err(v) => return *v,
        };
        match req.operation {
            Operation::Create => self.create(req, new.as_ref(), caller).await,
            _ => {
                let old = typed::<Sandbox>(req, req.old_object.as_ref(), "oldObject")
                    .ok()
                    .flatten();
                self.update(req, new.as_ref(), old.as_ref())
            }
        }
    }
}

/// The binding's labels and annotations `sandbox` carries, as
/// (field path, value).
fn binding_metadata(sandbox: &Sandbox) -> impl Iterator<Item = (String, &str)> {
    let labels = BINDING_LABELS.iter().filter_map(|k| {
        let v = sandbox.labels().get(*k)?;
        Some((format!("metadata.labels[{k}]"), v.as_str()))
    });
    let annotations = BINDING_ANNOTATIONS.iter().filter_map(|k| {
        let v = sandbox.annotations().get(*k)?;
        Some((format!("metadata.annotations[{k}]"), v.as_str()))
    });
    labels.chain(annotations)
}
