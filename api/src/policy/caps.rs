//! A namespace's caps with every default applied, and the admission check
//! of a pool's size, `prestarted` and sandbox defaults against them.

use crate::network::Ipv4Cidr;
use crate::pool::SandboxPoolSpec;
use crate::resources;
use crate::sandbox::SandboxResources;
use crate::validation::FieldErrors;

/// The caps of one namespace with every default applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Caps {
    /// Agent pods over all pools of the namespace.
    pub max_agents: u32,
    /// Slots over all pools of the namespace.
    pub max_slots: u32,
    /// Pre-started sandboxes per warm image of each of its agents.
    pub max_prestarted: u32,
    /// The most one of its sandboxes may use.
    pub max_sandbox: SandboxResources,
    /// Whether its sandboxes may ask for `network.mode: Egress`.
    pub allow_egress: bool,
    /// Whether its pools may run sandboxes as host users.
    pub allow_host_users: bool,
    /// What its egress sandboxes may not reach (the policy's `egressDeny`,
    /// the same for every namespace).
    pub egress_deny: Vec<Ipv4Cidr>,
}

/// Checks a pool's size and `prestarted` against its namespace's caps.
/// `others` are the namespace's other pools (their `poolMin` agents are
/// kept whatever happens, so together they must fit). An unset
/// `prestarted` always fits: the controller gives such agents the cap when
/// it is below the agent's default.
pub fn check_caps(
    spec: &SandboxPoolSpec,
    others: &[&SandboxPoolSpec],
    caps: &Caps,
    namespace: &str,
) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    let c = spec.capacity.effective();
    let slots = spec.slots_per_agent();
    let push = |errs: &mut FieldErrors, field: &str, message: String| {
        errs.0.push(crate::validation::FieldError {
            field: field.into(),
            message,
        })
    };
    let others_min: u64 = others
        .iter()
        .map(|o| u64::from(o.capacity.effective().pool_min))
        .sum();
    let others_min_slots: u64 = others
        .iter()
        .map(|o| u64::from(o.capacity.effective().pool_min) * u64::from(o.slots_per_agent()))
        .sum();
    if spec.capacity.pool_max.is_some() && c.pool_max > caps.max_agents {
        push(
            &mut errs,
            "spec.capacity.poolMax",
            format!(
                "{} exceeds the {} agents namespace {namespace} may hold (a cap the operator sets)",
                c.pool_max, caps.max_agents
            ),
        );
    }
    if spec
        .default_network
        .as_ref()
        .is_some_and(|n| n.has_egress())
        && !caps.allow_egress
    {
        push(
            &mut errs,
            "spec.defaultNetwork.mode",
            format!(
                "Egress is not allowed in namespace {namespace} by the operator's policy (allowEgress)"
            ),
        );
    }
    if spec.host_users == Some(true) && !caps.allow_host_users {
        push(
            &mut errs,
            "spec.hostUsers",
            format!(
                "running sandboxes as the node's own users is not allowed in namespace {namespace} by the operator's policy (allowHostUsers)"
            ),
        );
    }
    let too_many_agents = u64::from(c.pool_min) + others_min > u64::from(caps.max_agents);
    if too_many_agents {
        push(
            &mut errs,
            "spec.capacity.poolMin",
            format!(
                "{} more agents kept warm would exceed the {} agents namespace {namespace} may hold ({others_min} kept by its other pools)",
                c.pool_min, caps.max_agents
            ),
        );
    }
    if u64::from(slots) > u64::from(caps.max_slots) {
        push(
            &mut errs,
            "spec.maxSandboxesPerAgent",
            format!(
                "{slots} exceeds the {} slots namespace {namespace} may hold",
                caps.max_slots
            ),
        );
    } else if !too_many_agents
        && u64::from(c.pool_min) * u64::from(slots) + others_min_slots > u64::from(caps.max_slots)
    {
        push(
            &mut errs,
            "spec.capacity.poolMin",
            format!(
                "{} agents of {slots} slots kept warm would exceed the {} slots namespace {namespace} may hold ({others_min_slots} kept by its other pools)",
                c.pool_min, caps.max_slots
            ),
        );
    }
    if let Some(r) = spec.replicas
        && r.max(0) as u32 > caps.max_agents
    {
        push(
            &mut errs,
            "spec.replicas",
            format!(
                "{r} exceeds the {} agents namespace {namespace} may hold",
                caps.max_agents
            ),
        );
    }
    if let Some(p) = spec.prestarted
        && p.max(0) as u32 > caps.max_prestarted
    {
        push(
            &mut errs,
            "spec.prestarted",
            format!(
                "{p} exceeds the {} pre-started sandboxes per warm image agents of namespace {namespace} may keep (a cap the operator sets)",
                caps.max_prestarted
            ),
        );
    }
    if let Some(d) = &spec.sandbox_defaults
        && let Err(e) = resources::effective(
            Some(d),
            None,
            &caps.max_sandbox,
            namespace,
            "spec.sandboxDefaults.",
        )
    {
        errs.0.extend(e.0);
    }
    if errs.0.is_empty() { Ok(()) } else { Err(errs) }
}
