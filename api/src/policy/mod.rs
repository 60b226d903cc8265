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

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};

use crate::image;
use crate::network::Ipv4Cidr;
use crate::pool::MAX_PRESTARTED;
use crate::resources;
use crate::sandbox::SandboxResources;

mod agent_template;
mod caps;
#[cfg(test)]
mod tests;

pub use agent_template::{
    AGENT_CONTAINER, ALLOWED_CONTAINER_FIELDS, ALLOWED_METADATA_FIELDS, ALLOWED_POD_FIELDS,
    AgentRequest, RESERVED_DOMAINS, check_agent_template, is_reserved_key,
};
pub use caps::{Caps, check_caps};

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
