//! What the operator allows tenants' pools: which agent images may run, which
//! parts of an agent pod a pool may choose, and how many agents, slots and
//! pre-started sandboxes each namespace may hold.
//!
//! Agent pods are privileged and live in the operator's namespace, outside
//! every tenant's ResourceQuota. So a pool's `agentTemplate` is a *request*:
//! it may choose scheduling (node selector, affinity, tolerations, topology
//! spread, a priority class the operator allows), sizing (the agent
//! container's resources), an agent image the operator lists, and labels and
//! annotations outside the reserved domains. Everything else is refused at
//! admission, naming the field, and never copied by the controller even if
//! admission was bypassed.
//!
//! The policy is operator configuration (a ConfigMap in the operator's
//! namespace, key [`POLICY_KEY`]); the webhook and the controller read the
//! same one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, PodTemplateSpec, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::image;
use crate::network::Ipv4Cidr;
use crate::pool::{MAX_PRESTARTED, SandboxPoolSpec};
use crate::resources;
use crate::sandbox::SandboxResources;
use crate::validation::FieldErrors;

/// Name of the ConfigMap holding the policy, in the operator's namespace.
pub const POLICY_CONFIG_MAP: &str = "fast-sandbox-policy";
/// Key of the policy document in that ConfigMap (YAML or JSON).
pub const POLICY_KEY: &str = "policy.yaml";
/// The agent image used when the operator lists none.
pub const DEFAULT_AGENT_IMAGE: &str = "fast-sandbox/agent:dev";
/// Agents per namespace when the operator sets no cap.
pub const DEFAULT_MAX_AGENTS: u32 = 50;
/// Slots per namespace when the operator sets no cap.
pub const DEFAULT_MAX_SLOTS: u32 = 1000;
/// Pre-started sandboxes per warm image when the operator sets no cap: the
/// most a pool may ask for anyway.
pub const DEFAULT_MAX_PRESTARTED: u32 = MAX_PRESTARTED as u32;

/// CPU one sandbox may use when the operator sets no maximum.
pub const DEFAULT_MAX_SANDBOX_CPU: &str = "4";
/// Memory one sandbox may use when the operator sets no maximum.
pub const DEFAULT_MAX_SANDBOX_MEMORY: &str = "4Gi";
/// Processes and threads one sandbox may run when the operator sets no
/// maximum: a fork bomb stops here.
pub const DEFAULT_MAX_SANDBOX_PIDS: i64 = 4096;

/// Label and annotation domains a pool may not set on agent pods: ours,
/// Kubernetes' own (a tenant label `app.kubernetes.io/name` could make an
/// agent an endpoint of an operator Service) and CNI attachment.
pub const RESERVED_DOMAINS: &[&str] =
    &["sandbox.fast.io", "kubernetes.io", "k8s.io", "cni.cncf.io"];

/// Fields of `agentTemplate.spec` a pool may set.
pub const ALLOWED_POD_FIELDS: &[&str] = &[
    "containers",
    "nodeSelector",
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "priorityClassName",
];
/// Fields of the agent container a pool may set.
pub const ALLOWED_CONTAINER_FIELDS: &[&str] = &["name", "image", "imagePullPolicy", "resources"];
/// Fields of `agentTemplate.metadata` a pool may set.
pub const ALLOWED_METADATA_FIELDS: &[&str] = &["labels", "annotations"];
/// The one container of an agent pod.
pub const AGENT_CONTAINER: &str = "agent";

/// Caps on what the pools of one namespace hold together.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceCaps {
    /// Agent pods over all pools of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_agents: Option<u32>,
    /// Slots (agents × `maxSandboxesPerAgent`) over all its pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slots: Option<u32>,
    /// Pre-started sandboxes an agent of its pools keeps per warm image
    /// (`prestarted`): each holds node memory outside every quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prestarted: Option<u32>,
    /// The most one sandbox may use (field by field; unset fields:
    /// `DEFAULT_MAX_SANDBOX_*`). Admission refuses a sandbox asking for
    /// more, and gives this limit to one that asks for nothing and whose
    /// pool sets no default, so no sandbox runs unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sandbox_resources: Option<SandboxResources>,
    /// Whether its sandboxes may ask for `network.mode: Egress` (unset:
    /// no; the network stays loopback only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_egress: Option<bool>,
    /// Whether its pools may set `hostUsers: true`, running sandboxes as
    /// the node's own users (uid 0 the node's root). Unset: no.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_host_users: Option<bool>,
}

/// The operator's policy document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Agent images pools may ask for; the first is used when a pool names
    /// none. Empty: only [`DEFAULT_AGENT_IMAGE`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_images: Vec<String>,
    /// PriorityClasses agent pods may use. Empty: any class whose name does
    /// not start with `system-`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub priority_classes: Vec<String>,
    /// Caps of every namespace not listed in `namespaces`.
    #[serde(default)]
    pub namespace_defaults: NamespaceCaps,
    /// Caps of particular namespaces; unset fields fall back to
    /// `namespaceDefaults`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, NamespaceCaps>,
    /// IPv4 CIDRs no `Egress` sandbox reaches, whatever it allows: the
    /// cluster's pod, service and node ranges. Agent pods take the list at
    /// their start. DNS to the agent pod's nameservers is let through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_deny: Vec<Ipv4Cidr>,
}

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

/// Why a policy document was refused.
#[derive(Debug, thiserror::Error)]
#[error("{key} of ConfigMap {POLICY_CONFIG_MAP}: {message}")]
pub struct PolicyError {
    /// The key read.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl Policy {
    /// Parses a policy document (YAML, so JSON too).
    pub fn parse(doc: &str) -> Result<Self, PolicyError> {
        let p: Policy = serde_yaml::from_str(doc).map_err(|e| PolicyError {
            key: POLICY_KEY,
            message: e.to_string(),
        })?;
        for (i, img) in p.agent_images.iter().enumerate() {
            if let Err(e) = image::ImageRef::parse(img) {
                return Err(PolicyError {
                    key: POLICY_KEY,
                    message: format!("agentImages[{i}]: {e}"),
                });
            }
        }
        for (key, caps) in p.caps_blocks() {
            if let Some(max) = &caps.max_sandbox_resources
                && let Err(e) = resources::parse(max, &format!("{key}.maxSandboxResources."))
            {
                return Err(PolicyError {
                    key: POLICY_KEY,
                    message: e.to_string(),
                });
            }
        }
        Ok(p)
    }

    /// Every caps block with the path that names it in the document.
    fn caps_blocks(&self) -> Vec<(String, &NamespaceCaps)> {
        std::iter::once(("namespaceDefaults".to_string(), &self.namespace_defaults))
            .chain(
                self.namespaces
                    .iter()
                    .map(|(ns, c)| (format!("namespaces.{ns}"), c)),
            )
            .collect()
    }

    /// The caps of `namespace`.
    pub fn caps(&self, namespace: &str) -> Caps {
        let own = self.namespaces.get(namespace).cloned().unwrap_or_default();
        let d = &self.namespace_defaults;
        let (own_max, d_max) = (
            own.max_sandbox_resources.unwrap_or_default(),
            d.max_sandbox_resources.clone().unwrap_or_default(),
        );
        Caps {
            max_sandbox: SandboxResources {
                cpu: own_max
                    .cpu
                    .or(d_max.cpu)
                    .or_else(|| Some(Quantity(DEFAULT_MAX_SANDBOX_CPU.into()))),
                memory: own_max
                    .memory
                    .or(d_max.memory)
                    .or_else(|| Some(Quantity(DEFAULT_MAX_SANDBOX_MEMORY.into()))),
                pids: own_max
                    .pids
                    .or(d_max.pids)
                    .or(Some(DEFAULT_MAX_SANDBOX_PIDS)),
                // No default: a capped layer lives in memory, which only
                // the operator may choose for every sandbox.
                ephemeral_storage: own_max.ephemeral_storage.or(d_max.ephemeral_storage),
            },
            max_agents: own
                .max_agents
                .or(d.max_agents)
                .unwrap_or(DEFAULT_MAX_AGENTS),
            max_slots: own.max_slots.or(d.max_slots).unwrap_or(DEFAULT_MAX_SLOTS),
            max_prestarted: own
                .max_prestarted
                .or(d.max_prestarted)
                .unwrap_or(DEFAULT_MAX_PRESTARTED),
            allow_egress: own.allow_egress.or(d.allow_egress).unwrap_or(false),
            allow_host_users: own.allow_host_users.or(d.allow_host_users).unwrap_or(false),
            egress_deny: self.egress_deny.clone(),
        }
    }

    /// The image agent pods get when a pool names none.
    pub fn default_agent_image(&self) -> &str {
        self.agent_images
            .first()
            .map_or(DEFAULT_AGENT_IMAGE, String::as_str)
    }

    /// Whether agent pods may run `image`.
    pub fn allows_image(&self, image: &str) -> bool {
        let want = image::normalize(image);
        if self.agent_images.is_empty() {
            return want == image::normalize(DEFAULT_AGENT_IMAGE);
        }
        self.agent_images
            .iter()
            .any(|i| image::normalize(i) == want)
    }

    /// Whether agent pods may use PriorityClass `name`.
    pub fn allows_priority_class(&self, name: &str) -> bool {
        if self.priority_classes.is_empty() {
            !name.starts_with("system-")
        } else {
            self.priority_classes.iter().any(|c| c == name)
        }
    }
}

/// Whether a label or annotation key lies in a reserved domain.
pub fn is_reserved_key(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return false;
    };
    let prefix = prefix.to_ascii_lowercase();
    RESERVED_DOMAINS
        .iter()
        .any(|d| prefix == *d || prefix.ends_with(&format!(".{d}")))
}

fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn refuse_other_fields(errs: &mut FieldErrors, at: &str, obj: &Value, allowed: &[&str], why: &str) {
    if let Value::Object(m) = obj {
        for (k, v) in m {
            if !allowed.contains(&k.as_str()) && !is_unset(v) {
                errs.0.push(crate::validation::FieldError {
                    field: format!("{at}.{k}"),
                    message: why.to_string(),
                });
            }
        }
    }
}

const NOT_CHOSEN_BY_POOLS: &str = "may not be set: agent pods are built by the operator; a pool may choose only scheduling (nodeSelector, affinity, tolerations, topologySpreadConstraints, priorityClassName), the agent container's resources and image (from the operator's list), and labels and annotations";

/// Checks a pool's `agentTemplate` as sent (JSON, so fields our types do
/// not know are seen too) against `policy`. Every refusal names its field.
pub fn check_agent_template(template: &Value, policy: &Policy) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    let at = "spec.agentTemplate";
    if is_unset(template) {
        return Ok(());
    }
    if !template.is_object() {
        errs.0.push(crate::validation::FieldError {
            field: at.into(),
            message: "must be an object".into(),
        });
        return Err(errs);
    }
    refuse_other_fields(
        &mut errs,
        at,
        template,
        &["metadata", "spec"],
        NOT_CHOSEN_BY_POOLS,
    );
    let meta = &template["metadata"];
    refuse_other_fields(
        &mut errs,
        &format!("{at}.metadata"),
        meta,
        ALLOWED_METADATA_FIELDS,
        NOT_CHOSEN_BY_POOLS,
    );
    for map in ["labels", "annotations"] {
        if let Value::Object(m) = &meta[map] {
            for k in m.keys() {
                if is_reserved_key(k) {
                    errs.0.push(crate::validation::FieldError {
                        field: format!("{at}.metadata.{map}[{k}]"),
                        message: format!(
                            "keys in the domains {} are reserved for the operator",
                            RESERVED_DOMAINS.join(", ")
                        ),
                    });
                }
            }
        }
    }
    let spec = &template["spec"];
    let sat = format!("{at}.spec");
    refuse_other_fields(
        &mut errs,
        &sat,
        spec,
        ALLOWED_POD_FIELDS,
        NOT_CHOSEN_BY_POOLS,
    );
    if let Some(pc) = spec["priorityClassName"].as_str()
        && !pc.is_empty()
        && !policy.allows_priority_class(pc)
    {
        errs.0.push(crate::validation::FieldError {
            field: format!("{sat}.priorityClassName"),
            message: format!("PriorityClass {pc:?} is not allowed for agent pods by the operator"),
        });
    }
    if let Value::Array(containers) = &spec["containers"] {
        for (i, c) in containers.iter().enumerate() {
            let cat = format!("{sat}.containers[{i}]");
            if i > 0 {
                errs.0.push(crate::validation::FieldError {
                    field: cat,
                    message: format!(
                        "an agent pod has exactly one container, {AGENT_CONTAINER:?}; extra containers may not be added"
                    ),
                });
                continue;
            }
            refuse_other_fields(
                &mut errs,
                &cat,
                c,
                ALLOWED_CONTAINER_FIELDS,
                NOT_CHOSEN_BY_POOLS,
            );
            if let Some(name) = c["name"].as_str()
                && !name.is_empty()
                && name != AGENT_CONTAINER
            {
                errs.0.push(crate::validation::FieldError {
                    field: format!("{cat}.name"),
                    message: format!("must be {AGENT_CONTAINER:?}"),
                });
            }
            if let Some(img) = c["image"].as_str()
                && !img.is_empty()
                && !policy.allows_image(img)
            {
                let allowed = if policy.agent_images.is_empty() {
                    DEFAULT_AGENT_IMAGE.to_string()
                } else {
                    policy.agent_images.join(", ")
                };
                errs.0.push(crate::validation::FieldError {
                    field: format!("{cat}.image"),
                    message: format!(
                        "{img:?} is not an agent image the operator allows (allowed: {allowed})"
                    ),
                });
            }
        }
    }
    if errs.0.is_empty() { Ok(()) } else { Err(errs) }
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

/// The part of an agent pod a pool chose, as the controller copies it: only
/// what [`check_agent_template`] allows, whatever the template holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentRequest {
    /// Pod labels (reserved domains dropped).
    pub labels: BTreeMap<String, String>,
    /// Pod annotations (reserved domains dropped).
    pub annotations: BTreeMap<String, String>,
    /// Node selector.
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Affinity.
    pub affinity: Option<Affinity>,
    /// Tolerations.
    pub tolerations: Option<Vec<Toleration>>,
    /// Topology spread constraints.
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// PriorityClass, if the operator allows it.
    pub priority_class_name: Option<String>,
    /// The agent container's resources.
    pub resources: Option<ResourceRequirements>,
    /// The agent image: the one asked for if allowed, else the default.
    pub image: String,
    /// Image pull policy.
    pub image_pull_policy: Option<String>,
}

impl AgentRequest {
    /// What `template` asks for, filtered by `policy`.
    pub fn from_template(template: Option<&PodTemplateSpec>, policy: &Policy) -> Self {
        let keep = |m: Option<&BTreeMap<String, String>>| -> BTreeMap<String, String> {
            m.map(|m| {
                m.iter()
                    .filter(|(k, _)| !is_reserved_key(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
        };
        let meta = template.and_then(|t| t.metadata.as_ref());
        let spec = template.and_then(|t| t.spec.as_ref());
        let container = spec.and_then(|s| s.containers.first());
        let image = container
            .and_then(|c| c.image.as_deref())
            .filter(|i| policy.allows_image(i))
            .unwrap_or_else(|| policy.default_agent_image())
            .to_string();
        AgentRequest {
            labels: keep(meta.and_then(|m| m.labels.as_ref())),
            annotations: keep(meta.and_then(|m| m.annotations.as_ref())),
            node_selector: spec.and_then(|s| s.node_selector.clone()),
            affinity: spec.and_then(|s| s.affinity.clone()),
            tolerations: spec.and_then(|s| s.tolerations.clone()),
            topology_spread_constraints: spec.and_then(|s| s.topology_spread_constraints.clone()),
            priority_class_name: spec
                .and_then(|s| s.priority_class_name.clone())
                .filter(|p| policy.allows_priority_class(p)),
            resources: container.and_then(|c| c.resources.clone()),
            image,
            image_pull_policy: container.and_then(|c| c.image_pull_policy.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> Policy {
        Policy::parse(
            "agentImages: [fast-sandbox/agent:dev]\nnamespaceDefaults: {maxAgents: 5, maxSlots: 40}\nnamespaces:\n  big: {maxAgents: 100, maxPrestarted: 2}\n",
        )
        .unwrap()
    }

    fn fields(r: Result<(), FieldErrors>) -> Vec<String> {
        r.err()
            .map(|e| e.0.into_iter().map(|e| e.field).collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_original_manifest_is_allowed() {
        let t =
            json!({"spec": {"containers": [{"name": "agent", "image": "fast-sandbox/agent:dev"}]}});
        assert_eq!(check_agent_template(&t, &policy()), Ok(()));
        let t = json!({"spec": {"containers": [{"name": "agent", "image": "docker.io/fast-sandbox/agent:dev"}]}});
        assert_eq!(
            check_agent_template(&t, &policy()),
            Ok(()),
            "spellings of one image"
        );
        assert_eq!(check_agent_template(&Value::Null, &policy()), Ok(()));
    }

    #[test]
    fn scheduling_sizing_and_plain_labels_are_allowed() {
        let t = json!({
            "metadata": {"labels": {"team": "a"}, "annotations": {"example.com/x": "y"}},
            "spec": {
                "nodeSelector": {"pool": "fast"},
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "affinity": {"nodeAffinity": {}},
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}],
                "priorityClassName": "high",
                "containers": [{"name": "agent", "resources": {"limits": {"memory": "1Gi"}}}]
            }
        });
        assert_eq!(check_agent_template(&t, &policy()), Ok(()));
    }

    #[test]
    fn every_widening_field_is_refused_by_name() {
        let t = json!({
            "metadata": {"labels": {"app.kubernetes.io/name": "fast-sandbox-webhook"}, "annotations": {"sandbox.fast.io/draining": "x"}},
            "spec": {
                "hostNetwork": true, "hostPID": true, "volumes": [{"name": "root"}],
                "securityContext": {"runAsUser": 0}, "serviceAccountName": "x", "nodeName": "n",
                "initContainers": [{"name": "i"}], "priorityClassName": "system-node-critical",
                "containers": [
                    {"name": "evil", "image": "evil/root:1", "command": ["sh"], "args": ["-c"],
                     "securityContext": {"privileged": true}, "volumeMounts": [{"name": "root", "mountPath": "/h"}],
                     "env": [{"name": "FAST_SANDBOX_X", "value": "1"}]},
                    {"name": "sidecar"}
                ]
            }
        });
        let got = fields(check_agent_template(&t, &policy()));
        for want in [
            "spec.agentTemplate.metadata.labels[app.kubernetes.io/name]",
            "spec.agentTemplate.metadata.annotations[sandbox.fast.io/draining]",
            "spec.agentTemplate.spec.hostNetwork",
            "spec.agentTemplate.spec.hostPID",
            "spec.agentTemplate.spec.volumes",
            "spec.agentTemplate.spec.securityContext",
            "spec.agentTemplate.spec.serviceAccountName",
            "spec.agentTemplate.spec.nodeName",
            "spec.agentTemplate.spec.initContainers",
            "spec.agentTemplate.spec.priorityClassName",
            "spec.agentTemplate.spec.containers[0].name",
            "spec.agentTemplate.spec.containers[0].image",
            "spec.agentTemplate.spec.containers[0].command",
            "spec.agentTemplate.spec.containers[0].args",
            "spec.agentTemplate.spec.containers[0].securityContext",
            "spec.agentTemplate.spec.containers[0].volumeMounts",
            "spec.agentTemplate.spec.containers[0].env",
            "spec.agentTemplate.spec.containers[1]",
        ] {
            assert!(
                got.iter().any(|g| g == want),
                "{want} not refused; got {got:?}"
            );
        }
    }

    #[test]
    fn the_controller_copies_only_what_is_allowed() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"team": "a", "app.kubernetes.io/name": "x"}},
            "spec": {"hostNetwork": true, "priorityClassName": "system-node-critical",
                     "containers": [{"name": "agent", "image": "evil/root:1", "command": ["sh"]}]}
        }))
        .unwrap();
        let r = AgentRequest::from_template(Some(&t), &policy());
        assert_eq!(r.image, "fast-sandbox/agent:dev");
        assert_eq!(r.labels, BTreeMap::from([("team".into(), "a".into())]));
        assert_eq!(r.priority_class_name, None);
    }

    #[test]
    fn caps_default_and_override_per_namespace() {
        let p = policy();
        assert_eq!(
            p.caps("team"),
            Caps {
                max_agents: 5,
                max_slots: 40,
                max_prestarted: DEFAULT_MAX_PRESTARTED,
                max_sandbox: Policy::default().caps("x").max_sandbox,
                allow_egress: false,
                allow_host_users: false,
                egress_deny: vec![],
            }
        );
        assert_eq!(
            p.caps("big"),
            Caps {
                max_agents: 100,
                max_slots: 40,
                max_prestarted: 2,
                max_sandbox: Policy::default().caps("x").max_sandbox,
                allow_egress: false,
                allow_host_users: false,
                egress_deny: vec![],
            }
        );
        assert_eq!(
            Policy::default().caps("x"),
            Caps {
                max_agents: DEFAULT_MAX_AGENTS,
                max_slots: DEFAULT_MAX_SLOTS,
                max_prestarted: DEFAULT_MAX_PRESTARTED,
                max_sandbox: Policy::default().caps("x").max_sandbox,
                allow_egress: false,
                allow_host_users: false,
                egress_deny: vec![],
            }
        );
        assert!(Policy::parse("agentImages: [\"not an image\"]").is_err());
        assert!(
            Policy::parse("egressDeny: [10.0.0.1/8]").is_err(),
            "host bits"
        );
        let egress = Policy::parse(
            "namespaceDefaults: {allowEgress: true}\nnamespaces: {closed: {allowEgress: false}}\negressDeny: [10.0.0.0/8]",
        )
        .unwrap();
        assert!(egress.caps("open").allow_egress);
        assert!(!egress.caps("closed").allow_egress);
        assert_eq!(egress.egress_deny[0].to_string(), "10.0.0.0/8");
        assert!(Policy::parse("unknownKey: 1").is_err(), "typos are refused");
    }

    #[test]
    fn sandbox_maximums_merge_field_by_field_and_bound_pool_defaults() {
        let p = Policy::parse(
            "namespaceDefaults: {maxSandboxResources: {cpu: '2', memory: 1Gi}}\nnamespaces: {big: {maxSandboxResources: {memory: 8Gi, pids: 4096}}}",
        )
        .unwrap();
        let big = p.caps("big").max_sandbox;
        assert_eq!(
            (big.cpu.unwrap().0, big.memory.unwrap().0, big.pids),
            ("2".to_string(), "8Gi".to_string(), Some(4096))
        );
        let err = Policy::parse("namespaces: {a: {maxSandboxResources: {memory: lots}}}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("namespaces.a.maxSandboxResources.memory"),
            "{err}"
        );

        let spec: SandboxPoolSpec =
            serde_json::from_value(serde_json::json!({"sandboxDefaults": {"memory": "2Gi"}}))
                .unwrap();
        let err = check_caps(&spec, &[], &p.caps("team"), "team").unwrap_err();
        assert_eq!(err.0[0].field, "spec.sandboxDefaults.memory");
        assert!(check_caps(&spec, &[], &p.caps("big"), "big").is_ok());
    }

    #[test]
    fn pools_past_their_namespace_cap_are_refused_by_field() {
        let caps = policy().caps("team");
        let mut spec = SandboxPoolSpec::default();
        spec.capacity.pool_min = Some(1000);
        spec.capacity.pool_max = Some(1000);
        let got = fields(check_caps(&spec, &[], &caps, "team"));
        assert!(
            got.contains(&"spec.capacity.poolMin".to_string()),
            "{got:?}"
        );
        assert!(
            got.contains(&"spec.capacity.poolMax".to_string()),
            "{got:?}"
        );
        let mut ok = SandboxPoolSpec {
            max_sandboxes_per_agent: Some(8),
            ..Default::default()
        };
        ok.capacity.pool_min = Some(2);
        assert_eq!(check_caps(&ok, &[], &caps, "team"), Ok(()));
        let mut egress = ok.clone();
        egress.default_network = Some(crate::network::SandboxNetwork {
            mode: crate::network::NetworkMode::Egress,
            ..Default::default()
        });
        assert_eq!(
            fields(check_caps(&egress, &[], &caps, "team")),
            vec!["spec.defaultNetwork.mode"]
        );
        let open = Caps {
            allow_egress: true,
            ..caps.clone()
        };
        assert_eq!(check_caps(&egress, &[], &open, "team"), Ok(()));
        let host = SandboxPoolSpec {
            host_users: Some(true),
            ..ok.clone()
        };
        let refused = check_caps(&host, &[], &caps, "team").unwrap_err();
        assert_eq!(refused.0[0].field, "spec.hostUsers");
        assert!(
            refused.0[0].message.contains("allowHostUsers"),
            "{refused:?}"
        );
        let mapped = SandboxPoolSpec {
            host_users: Some(false),
            ..ok.clone()
        };
        assert_eq!(check_caps(&mapped, &[], &caps, "team"), Ok(()));
        let trusted = Caps {
            allow_host_users: true,
            ..caps.clone()
        };
        assert_eq!(check_caps(&host, &[], &trusted, "team"), Ok(()));
        // Two such pools keep 4 agents of 8 slots: 32 of 40 slots.
        assert_eq!(check_caps(&ok, &[&ok], &caps, "team"), Ok(()));
        let got = fields(check_caps(&ok, &[&ok, &ok], &caps, "team"));
        assert_eq!(got, ["spec.capacity.poolMin"]);
        let wide = SandboxPoolSpec {
            max_sandboxes_per_agent: Some(64),
            ..Default::default()
        };
        assert_eq!(
            fields(check_caps(&wide, &[], &caps, "team")),
            ["spec.maxSandboxesPerAgent"]
        );
    }

    #[test]
    fn prestarted_past_the_namespace_cap_is_refused() {
        let big = policy().caps("big");
        let at = |p: Option<i32>| SandboxPoolSpec {
            prestarted: p,
            ..Default::default()
        };
        for ok in [None, Some(0), Some(2)] {
            assert_eq!(check_caps(&at(ok), &[], &big, "big"), Ok(()), "{ok:?}");
        }
        let err = check_caps(&at(Some(3)), &[], &big, "big").unwrap_err();
        assert_eq!(fields(Err(err.clone())), ["spec.prestarted"]);
        assert!(err.to_string().contains("3 exceeds the 2"), "{err}");
        // Without a cap a pool may ask for what the schema allows.
        let team = policy().caps("team");
        assert_eq!(
            check_caps(&at(Some(MAX_PRESTARTED)), &[], &team, "team"),
            Ok(())
        );
    }
}
