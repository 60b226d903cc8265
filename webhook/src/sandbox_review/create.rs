//! CREATE of a Sandbox: validate what the CRD schema cannot, fill in the
//! pool's defaults (network, limits) within the operator's policy, and
//! bind the sandbox to an agent from the placement index with a JSON
//! patch. A dry run, or a review from a caller not known to be the
//! apiserver, gets the same answer and reserves nothing.

use chrono::Utc;
use fast_sandbox_api::resources;
use fast_sandbox_api::validation::validate_sandbox_spec;
use fast_sandbox_api::wellknown::LABEL_POOL;
use fast_sandbox_api::{Sandbox, SandboxNetwork};
use fast_sandbox_placement::pool_key;

use super::binding_metadata;
use crate::binding::{self, Binding};
use crate::metrics::{Outcome, Placement};
use crate::pool_defaults::Defaults;
use crate::review::{Caller, Request, Response, Reviewer, Verdict, allowed, denied};

impl Reviewer {
    /// Reviews a CREATE: validates the sandbox and binds it.
    pub(super) async fn create(
        &self,
        req: &Request,
        sandbox: Option<&Sandbox>,
        caller: Caller,
    ) -> Verdict {
        let uid = req.uid.as_str();
        let Some(sandbox) = sandbox else {
            return denied(Response::deny(
                uid,
                400,
                "BadRequest",
                "CREATE without an object".into(),
            ));
        };
        let spec = &sandbox.spec;
        if spec.agent_ref.is_some() {
            if self.is_controller(req) {
                return allowed(uid);
            }
            return denied(Response::deny(
                uid,
                422,
                "Invalid",
                "spec.agentRef: is written by the scheduler at admission; leave it unset".into(),
            ));
        }
        // The pool label is written from spec.poolRef whatever was sent.
        let pool_label = format!("metadata.labels[{LABEL_POOL}]");
        if let Some((field, _)) = binding_metadata(sandbox)
            .find(|(field, _)| *field != pool_label && !self.is_controller(req))
        {
            return denied(Response::deny(
                uid,
                422,
                "Invalid",
                format!("{field}: is written at admission; leave it unset"),
            ));
        }
        if let Err(errs) = validate_sandbox_spec(spec) {
            return denied(Response::deny(uid, 422, "Invalid", errs.to_string()));
        }
        let namespace = req
            .namespace
            .as_deref()
            .or(sandbox.metadata.namespace.as_deref())
            .unwrap_or_default();
        let key = pool_key(namespace, &spec.pool_ref);
        let defaults = match self.pool_defaults(namespace, &spec.pool_ref, &key).await {
            Ok(d) => d,
            Err(message) => return denied(Response::deny(uid, 422, "Invalid", message)),
        };
        let caps = self.policy.get().caps(namespace);
        let network = match effective_network(spec, defaults.network, caps.allow_egress, namespace)
        {
            Ok(n) => n,
            Err(message) => return denied(Response::deny(uid, 422, "Invalid", message)),
        };
        let max = caps.max_sandbox;
        let resources = match resources::effective(
            spec.resources.as_ref(),
            defaults.resources.as_ref(),
            &max,
            namespace,
            "spec.resources.",
        ) {
            Ok(r) if r != spec.resources => r,
            Ok(_) => None,
            Err(errs) => return denied(Response::deny(uid, 422, "Invalid", errs.to_string())),
        };

        let choice = if req.dry_run || !caller.authenticated {
            self.index.choose(&key, &spec.image)
        } else {
            // The reservation is keyed by the request UID: a new object has
            // no UID yet. The watch re-keys it once the object is stored.
            self.index.reserve(&key, &spec.image, uid).ok()
        };
        self.metrics.observe_placement(match &choice {
            Some(c) if c.image_hit => Placement::Hit,
            Some(_) => Placement::Miss,
            None => Placement::NoCapacity,
        });
        let mut warnings = Vec::new();
        if choice.is_none() {
            warnings.push(format!(
                "no ready agent of pool {} has a free slot; the sandbox stays Pending until the pool grows",
                spec.pool_ref
            ));
        }
        let outcome = if choice.is_some() {
            Outcome::Bound
        } else {
            Outcome::Unbound
        };
        let b = Binding {
            pool: spec.pool_ref.clone(),
            choice,
            bound_at: Utc::now(),
            reservation: uid.to_string(),
            resources,
            network,
            at_admission: true,
        };
        let mut response = Response::allow(uid).with_patch(&binding::patch(&sandbox.metadata, &b));
        response.warnings = warnings;
        Verdict { response, outcome }
    }

    /// The pool's `sandboxDefaults`, or `Err(message)` when the pool does
    /// not exist. A pool the watch has not seen yet (applied together with
    /// its first sandbox) is looked up.
    async fn pool_defaults(
        &self,
        namespace: &str,
        pool: &str,
        key: &str,
    ) -> Result<Defaults, String> {
        if self.index.has_pool(key) {
            return Ok(self.pool_defaults.get(key).unwrap_or_default());
        }
        let message =
            format!("spec.poolRef: SandboxPool {pool:?} does not exist in namespace {namespace:?}");
        let Some(lookup) = &self.pools else {
            return Err(message);
        };
        match lookup.get(namespace, pool).await {
            Ok(Some(p)) => Ok(Defaults::of(&p).unwrap_or_default()),
            Ok(None) => Err(message),
            Err(e) => {
                // Our own lookup failing must not block users; the
                // controller reports PoolNotFound if the pool is missing.
                tracing::warn!(namespace, pool, error = %e, "pool lookup failed; admitting without its sandbox defaults");
                Ok(Defaults::default())
            }
        }
    }
}

/// The network a new sandbox runs with: its own, else its pool's
/// `defaultNetwork` (returned to be written into its spec; `None` when the
/// spec stays as sent). Egress is refused, naming the field, in a
/// namespace the operator's policy does not allow it.
fn effective_network(
    spec: &fast_sandbox_api::SandboxSpec,
    pool_default: Option<SandboxNetwork>,
    allow_egress: bool,
    namespace: &str,
) -> Result<Option<SandboxNetwork>, String> {
    let (effective, field, written) = match &spec.network {
        Some(n) => (Some(n.clone()), "spec.network.mode", None),
        None => (
            pool_default.clone(),
            "spec.network.mode (from the pool's defaultNetwork)",
            pool_default,
        ),
    };
    if effective.as_ref().is_some_and(SandboxNetwork::has_egress) && !allow_egress {
        return Err(format!(
            "{field}: Egress is not allowed in namespace {namespace} by the operator's policy (allowEgress); use None"
        ));
    }
    Ok(written)
}
