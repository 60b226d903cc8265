//! The admission decision, and the AdmissionReview wire format.
//!
//! Every review is read untyped first, then its object decoded by our types
//! one field at a time: an object we could not read later is refused now,
//! naming the field, so nothing is stored that a component cannot decode.
//! Sandboxes are bound at CREATE and guarded at UPDATE
//! ([`crate::sandbox_review`]); SandboxPools are held to the operator's
//! policy ([`crate::pool_review`]).
//!
//! The response is written with our own type rather than kube's
//! `AdmissionResponse`, whose `patch` (a `Vec<u8>`) serialises as an array of
//! numbers; the apiserver's API documents a base64 string, which is what
//! [`Response::patch`] sends.

use std::sync::Arc;

use fast_sandbox_api::SandboxPool;
use fast_sandbox_k8s::decode;
use fast_sandbox_k8s::policy::SharedPolicy;
use fast_sandbox_placement::Index;
use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::metrics::{Metrics, Outcome};
use crate::pool_defaults::PoolDefaults;

/// Username of the controller's service account, allowed to change a
/// sandbox's binding (re-placement).
pub const DEFAULT_CONTROLLER_USERNAME: &str =
    "system:serviceaccount:fast-sandbox-system:fast-sandbox-controller";

/// `apiVersion` of the reviews we answer.
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";

/// A request body that is not an AdmissionReview we can answer; the server
/// answers 400.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is not JSON of an AdmissionReview.
    #[error("request body is not an AdmissionReview: {0}")]
    Decode(#[from] serde_json::Error),
    /// The review carries no `request`.
    #[error("AdmissionReview has no request")]
    NoRequest,
}

/// Looks pools up on the apiserver: whether one exists when the index has
/// not seen it yet (a pool and its first sandbox applied together race the
/// watch), and a namespace's pools (their sum must fit its caps).
pub trait PoolLookup: Send + Sync {
    /// SandboxPool `namespace/name` if it exists and is not being deleted;
    /// `Err` with a message if that cannot be known now.
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SandboxPool>, String>>;

    /// Every pool of `namespace` that our types can read.
    fn in_namespace<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SandboxPool>, String>>;
}

/// The `response` of an AdmissionReview, as the apiserver reads it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// The request's UID, copied.
    pub uid: String,
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Why it was denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The JSON patch, base64 on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<ByteString>,
    /// `JSONPatch` when `patch` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Shown to the client (kubectl prints them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The `status` of a denied request, as a metav1.Status subset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// HTTP code the apiserver returns to the client.
    pub code: u16,
    /// Machine-readable reason (`Invalid`, `Forbidden`).
    pub reason: String,
    /// Human-readable message naming the field.
    pub message: String,
}

impl Response {
    pub(crate) fn allow(uid: &str) -> Self {
        Response {
            uid: uid.to_string(),
            allowed: true,
            ..Default::default()
        }
    }

    pub(crate) fn deny(uid: &str, code: u16, reason: &str, message: String) -> Self {
        Response {
            uid: uid.to_string(),
            allowed: false,
            status: Some(Status {
                code,
                reason: reason.to_string(),
                message,
            }),
            ..Default::default()
        }
    }

    pub(crate) fn with_patch(mut self, patch: &json_patch::Patch) -> Self {
        // Serialising a patch of strings and JSON values cannot fail.
        let bytes = serde_json::to_vec(patch).unwrap_or_default();
        self.patch = Some(ByteString(bytes));
        self.patch_type = Some("JSONPatch".to_string());
        self
    }

    /// The patch decoded, for tests and logs.
    pub fn patch_ops(&self) -> Option<json_patch::Patch> {
        self.patch
            .as_ref()
            .and_then(|p| serde_json::from_slice(&p.0).ok())
    }

    /// The denial message, if denied.
    pub fn message(&self) -> Option<&str> {
        self.status.as_ref().map(|s| s.message.as_str())
    }
}

/// The AdmissionReview envelope of a [`Response`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOut {
    /// Always `admission.k8s.io/v1`.
    pub api_version: String,
    /// Always `AdmissionReview`.
    pub kind: String,
    /// The answer.
    pub response: Response,
}

/// One answered review.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// What the apiserver gets.
    pub response: Response,
    /// For metrics and logs.
    pub outcome: Outcome,
}

impl Verdict {
    /// The AdmissionReview JSON sent back.
    pub fn to_json(&self) -> Vec<u8> {
        let out = ReviewOut {
            api_version: ADMISSION_API_VERSION.to_string(),
            kind: "AdmissionReview".to_string(),
            response: self.response.clone(),
        };
        serde_json::to_vec(&out).unwrap_or_default()
    }
}

/// Who sent a review, as the TLS layer established it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The caller presented a client certificate of an allowed name (the
    /// apiserver). Only such a review reserves a slot: anyone else reaching
    /// the port could otherwise make pools look full.
    pub authenticated: bool,
}

impl Caller {
    /// The apiserver, authenticated by its client certificate.
    pub const APISERVER: Caller = Caller {
        authenticated: true,
    };
    /// A caller whose identity is not known (client authentication off).
    pub const UNKNOWN: Caller = Caller {
        authenticated: false,
    };
}

/// A review request with its object still untyped.
pub(crate) type Request = AdmissionRequest<DynamicObject>;

/// Decides admission for Sandboxes and SandboxPools.
#[derive(Clone)]
pub struct Reviewer {
    pub(crate) index: Arc<Index>,
    pub(crate) controller_username: String,
    pub(crate) pools: Option<Arc<dyn PoolLookup>>,
    pub(crate) metrics: Metrics,
    pub(crate) policy: SharedPolicy,
    pub(crate) pool_defaults: Arc<PoolDefaults>,
}

impl Reviewer {
    /// A reviewer placing from `index`, treating `controller_username` as
    /// the controller.
    pub fn new(index: Arc<Index>, controller_username: impl Into<String>) -> Self {
        Reviewer {
            index,
            controller_username: controller_username.into(),
            pools: None,
            metrics: Metrics::new(),
            policy: SharedPolicy::default(),
            pool_defaults: Arc::default(),
        }
    }

    /// Fills new sandboxes' unset limits from `defaults` (fed by the pool
    /// watch).
    pub fn with_pool_defaults(mut self, defaults: Arc<PoolDefaults>) -> Self {
        self.pool_defaults = defaults;
        self
    }

    /// Asks `lookup` about pools the index has not seen, and for a
    /// namespace's pools.
    pub fn with_pool_lookup(mut self, lookup: Arc<dyn PoolLookup>) -> Self {
        self.pools = Some(lookup);
        self
    }

    /// Counts placements in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Holds pools to `policy`.
    pub fn with_policy(mut self, policy: SharedPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Answers one AdmissionReview body from `caller`.
    pub async fn review(&self, body: &[u8], caller: Caller) -> Result<Verdict, ReviewError> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
        let req = review.request.ok_or(ReviewError::NoRequest)?;
        if req.operation != Operation::Create && req.operation != Operation::Update {
            return Ok(allowed(&req.uid));
        }
        Ok(match req.kind.kind.as_str() {
            "Sandbox" => self.review_sandbox(&req, caller).await,
            "SandboxPool" => self.review_pool(&req).await,
            other => denied(Response::deny(
                &req.uid,
                400,
                "BadRequest",
                format!("this webhook reviews Sandboxes and SandboxPools, not {other}"),
            )),
        })
    }

    pub(crate) fn is_controller<T>(&self, req: &AdmissionRequest<T>) -> bool
    where
        T: kube::Resource,
    {
        req.user_info.username.as_deref() == Some(self.controller_username.as_str())
    }
}

/// The request's object (or old object) decoded as `K`, or a denial that
/// names the field our types cannot read.
pub(crate) fn typed<K: DeserializeOwned>(
    req: &Request,
    obj: Option<&DynamicObject>,
    what: &str,
) -> Result<Option<K>, Box<Verdict>> {
    let Some(obj) = obj else { return Ok(None) };
    let value = serde_json::to_value(obj).map_err(|e| {
        Box::new(denied(Response::deny(
            &req.uid,
            400,
            "BadRequest",
            format!("{what}: {e}"),
        )))
    })?;
    decode::from_value::<K>(value).map(Some).map_err(|e| {
        Box::new(denied(Response::deny(
            &req.uid,
            422,
            "Invalid",
            format!(
                "{}: {}: Fast Sandbox cannot represent this value, so the object would be unreadable by its components",
                e.path, e.message
            ),
        )))
    })
}

pub(crate) fn allowed(uid: &str) -> Verdict {
    Verdict {
        response: Response::allow(uid),
        outcome: Outcome::Allowed,
    }
}

pub(crate) fn denied(response: Response) -> Verdict {
    Verdict {
        response,
        outcome: Outcome::Denied,
    }
}

/// Builders of review bodies shared by the review tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use serde_json::{Value, json};

    /// The controller's user name in tests.
    pub const CONTROLLER: &str = DEFAULT_CONTROLLER_USERNAME;

    /// A Sandbox object with `spec`.
    pub fn sandbox(spec: Value) -> Value {
        json!({
            "apiVersion": "sandbox.fast.io/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": "sb", "namespace": "team", "creationTimestamp": null},
            "spec": spec
        })
    }

    /// An AdmissionReview of `kind` (`Sandbox` or `SandboxPool`).
    pub fn review_of(
        kind: &str,
        op: &str,
        user: &str,
        object: Value,
        old: Value,
        dry_run: bool,
    ) -> Vec<u8> {
        let resource = if kind == "Sandbox" {
            "sandboxes"
        } else {
            "sandboxpools"
        };
        serde_json::to_vec(&json!({
            "kind": "AdmissionReview",
            "apiVersion": "admission.k8s.io/v1",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "sandbox.fast.io", "version": "v1alpha1", "kind": kind},
                "resource": {"group": "sandbox.fast.io", "version": "v1alpha1", "resource": resource},
                "requestKind": {"group": "sandbox.fast.io", "version": "v1alpha1", "kind": kind},
                "requestResource": {"group": "sandbox.fast.io", "version": "v1alpha1", "resource": resource},
                "name": object["metadata"]["name"].as_str().or(old["metadata"]["name"].as_str()).unwrap_or("sb"),
                "namespace": "team",
                "operation": op,
                "userInfo": {"username": user, "groups": ["system:authenticated"]},
                "object": object,
                "oldObject": old,
                "dryRun": dry_run,
                "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
            }
        }))
        .unwrap()
    }

    /// A Sandbox review.
    pub fn review_body(op: &str, user: &str, object: Value, old: Value, dry_run: bool) -> Vec<u8> {
        review_of("Sandbox", op, user, object, old, dry_run)
    }

    /// The verdict on `body` from the apiserver.
    pub async fn run(r: &Reviewer, body: Vec<u8>) -> Verdict {
        r.review(&body, Caller::APISERVER)
            .await
            .expect("review answers")
    }

    /// A Sandbox CREATE by a user.
    pub fn create(spec: Value) -> Vec<u8> {
        review_body("CREATE", "alice", sandbox(spec), Value::Null, false)
    }
}
