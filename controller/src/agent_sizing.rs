//! The requests of an agent pod whose pool does not size it: the agent
//! itself, plus the memory each of its slots' sandboxes is limited to by
//! the pool's `sandboxDefaults`, as Kubernetes counts a Pod's limit as its
//! request when it sets none. The operator's maximum is a ceiling, not an
//! expectation, and is not counted. Sandboxes' cgroups nest under the agent pod's, so what they use
//! is the pod's use; with these requests the scheduler counts it and the
//! pod is Burstable, never BestEffort (first to be evicted).
//!
//! No limits: a pod limit would cap all its sandboxes together, and the
//! kernel would OOM-kill the agent with them. CPU is requested for the
//! agent only, since a sandbox's CPU limit is a quota, not a reservation.

use std::collections::BTreeMap;

use fast_sandbox_api::agent::ResourceLimits;
use fast_sandbox_api::resources;
use fast_sandbox_api::{SandboxPool, SandboxResources};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

/// CPU the agent itself requests.
pub const AGENT_CPU_REQUEST: &str = "10m";
/// Memory the agent itself requests, its pre-started sandboxes included.
pub const AGENT_MEMORY_REQUEST_BYTES: u64 = 64 << 20;

/// What the agent container of `pool` requests: the pool's own choice if it
/// made one, else the agent's share plus `slots` × the memory limit the
/// pool's `sandboxDefaults` give a sandbox (within the operator's `max`).
pub fn agent_resources(
    chosen: Option<&ResourceRequirements>,
    pool: &SandboxPool,
    slots: u32,
    max: &SandboxResources,
) -> ResourceRequirements {
    if let Some(r) = chosen
        && (r.requests.as_ref().is_some_and(|m| !m.is_empty())
            || r.limits.as_ref().is_some_and(|m| !m.is_empty()))
    {
        return r.clone();
    }
    // Only a pool default counts: the maximum bounds, it is not a size.
    let per_sandbox = pool
        .spec
        .sandbox_defaults
        .as_ref()
        .filter(|d| d.memory.is_some())
        .and_then(|_| default_limits(pool, max).memory_bytes)
        .unwrap_or(0);
    let memory =
        AGENT_MEMORY_REQUEST_BYTES.saturating_add(per_sandbox.saturating_mul(u64::from(slots)));
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(AGENT_CPU_REQUEST.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])),
        ..Default::default()
    }
}

/// The limits admission gives a sandbox of `pool` that asks for nothing:
/// the pool's `sandboxDefaults` within the operator's maximum `max`, and
/// the maximum where the pool has no default.
pub fn default_limits(pool: &SandboxPool, max: &SandboxResources) -> ResourceLimits {
    let ns = pool.namespace().unwrap_or_default();
    resources::effective(None, pool.spec.sandbox_defaults.as_ref(), max, &ns, "")
        .ok()
        .flatten()
        .and_then(|r| resources::parse(&r, "").ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(defaults: Option<serde_json::Value>) -> SandboxPool {
        let mut p = SandboxPool::new("p", Default::default());
        p.metadata.namespace = Some("team".into());
        p.spec.sandbox_defaults = defaults.map(|d| serde_json::from_value(d).unwrap());
        p
    }

    fn memory(r: &ResourceRequirements) -> String {
        r.requests.as_ref().unwrap()["memory"].0.clone()
    }

    #[test]
    fn an_unsized_pool_requests_the_agent_plus_each_slots_default_memory() {
        let none = SandboxResources::default();
        let r = agent_resources(None, &pool(None), 8, &none);
        assert_eq!(memory(&r), (64u64 << 20).to_string());
        assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "10m");
        assert!(
            r.limits.is_none(),
            "a pod limit would cap all sandboxes together"
        );

        let r = agent_resources(
            None,
            &pool(Some(serde_json::json!({"memory": "128Mi"}))),
            8,
            &none,
        );
        assert_eq!(memory(&r), ((64u64 + 8 * 128) << 20).to_string());

        // The operator's maximum bounds a default but is not counted alone.
        let max: SandboxResources =
            serde_json::from_value(serde_json::json!({"memory": "64Mi"})).unwrap();
        let r = agent_resources(None, &pool(None), 2, &max);
        assert_eq!(memory(&r), (64u64 << 20).to_string());
        let r = agent_resources(
            None,
            &pool(Some(serde_json::json!({"memory": "1Gi"}))),
            2,
            &max,
        );
        assert_eq!(memory(&r), ((64u64 + 128) << 20).to_string());
    }

    #[test]
    fn a_pool_that_sizes_its_agents_keeps_its_choice() {
        let chosen: ResourceRequirements =
            serde_json::from_value(serde_json::json!({"limits": {"memory": "1Gi"}})).unwrap();
        let r = agent_resources(Some(&chosen), &pool(None), 8, &SandboxResources::default());
        assert_eq!(r, chosen);
    }
}
