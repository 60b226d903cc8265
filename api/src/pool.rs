//! The `SandboxPool` custom resource: a warm pool of agent pods.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::sandbox::SandboxResources;

/// Default slots per agent when the pool does not say.
pub const DEFAULT_SLOTS_PER_AGENT: i32 = 16;
/// Pre-started sandboxes per warm image an agent keeps when the pool does
/// not say; the agent's own default (`--stock-size`) is this constant.
pub const DEFAULT_PRESTARTED: i32 = 4;
/// Most pre-started sandboxes per warm image a pool may ask for: each holds
/// about 1.6 MiB of node memory while it waits (measured; 0.4 MiB of it
/// charged to the agent pod, the rest runc and shim state).
pub const MAX_PRESTARTED: i32 = 32;

/// Desired state of a pool of warm agent pods.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "sandbox.fast.io",
    version = "v1alpha1",
    kind = "SandboxPool",
    namespaced,
    status = "SandboxPoolStatus",
    shortname = "sbp",
    category = "fast-sandbox",
    derive = "PartialEq",
    derive = "Default",
    doc = "A pool of warm agent pods that run Sandboxes.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.agents",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Agents", type_ = "integer", json_path = ".status.agents"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyAgents"),
    printcolumn(
        name = "Slots Used",
        type_ = "integer",
        json_path = ".status.slotsUsed"
    ),
    printcolumn(
        name = "Slots Total",
        type_ = "integer",
        json_path = ".status.slotsTotal"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.replicas) || !has(self.capacity.poolMax) || self.replicas <= self.capacity.poolMax").message("replicas must not exceed capacity.poolMax").field_path(".replicas"))]
#[serde(rename_all = "camelCase")]
pub struct SandboxPoolSpec {
    /// How many agents the pool keeps.
    #[serde(default)]
    pub capacity: PoolCapacity,
    /// Sandboxes one agent runs at once; the agent enforces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_sandboxes_per_agent: Option<i32>,
    /// Desired agent count, set by `kubectl scale sbp/<name> --replicas=N`;
    /// kept within `poolMin..=poolMax`. Unset: the buffer rules decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// What the pool asks of its agent pods: scheduling, sizing, an agent
    /// image the operator allows, labels and annotations. Agent pods run in
    /// the operator's namespace, built from the operator's template; see
    /// `fast_sandbox_api::policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::pod_template")]
    pub agent_template: Option<PodTemplateSpec>,
    /// Images the scheduler extender prefers nodes for and agents keep ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub warm_images: Vec<String>,
    /// Pre-started sandboxes each agent keeps per warm image (the pool's
    /// `warmImages` plus the ones it used recently), so a create claims a
    /// running container in milliseconds. 0 disables; unset: the agent's
    /// default, 4. Each costs about 1.6 MiB of node memory while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_PRESTARTED))]
    pub prestarted: Option<i32>,
    /// The OCI runtime the pool's sandboxes run in: `runc` (the default)
    /// or `gvisor` (gVisor's `runsc`, a user-space kernel between the
    /// sandbox and the node's; containerd's runtime
    /// `io.containerd.runsc.v1`, which the node must have installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<SandboxRuntime>,
    /// Limits of a sandbox of this pool that sets no `resources` (field by
    /// field), written into its spec at admission. Without them, and
    /// without an operator maximum, such a sandbox has no CPU, memory or
    /// pids limit of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_defaults: Option<SandboxResources>,
    /// Network of a sandbox of this pool that sets no `network`, written
    /// into its spec at admission. Unset: loopback only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_network: Option<crate::network::SandboxNetwork>,
    /// Whether the pool's sandboxes run as the node's own users. Unset or
    /// false: each sandbox runs in a user namespace of its own, its uid 0
    /// an unprivileged host uid no other sandbox of the node has. true:
    /// uid 0 in a sandbox is the node's root (for images that need real
    /// root, such as ones that load kernel modules or mount filesystems);
    /// the operator's policy must allow it (`allowHostUsers`). gVisor
    /// pools are never mapped: gVisor's kernel is the boundary there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_users: Option<bool>,
}

/// The OCI runtime of a pool's sandboxes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SandboxRuntime {
    /// runc: namespaces, cgroups and seccomp on the node's kernel.
    #[default]
    Runc,
    /// gVisor: the sandbox's system calls are served by a user-space
    /// kernel (runsc), so a kernel bug is not reachable from the sandbox.
    Gvisor,
}

impl SandboxRuntime {
    /// containerd's runtime (shim) name: containerd runs
    /// `containerd-shim-<name>-<version>` from its PATH.
    pub fn containerd_runtime(self) -> &'static str {
        match self {
            SandboxRuntime::Runc => RUNC_RUNTIME,
            SandboxRuntime::Gvisor => GVISOR_RUNTIME,
        }
    }
}

/// containerd's runtime of runc, the agent's default.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// containerd's runtime of gVisor (`containerd-shim-runsc-v1`).
pub const GVISOR_RUNTIME: &str = "io.containerd.runsc.v1";

/// Bounds of the pool size and of its buffer of free agents.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(validation = Rule::new("!has(self.poolMin) || !has(self.poolMax) || self.poolMin <= self.poolMax").message("poolMin must be less than or equal to poolMax").field_path(".poolMin"))]
#[x_kube(validation = Rule::new("!has(self.bufferMin) || !has(self.bufferMax) || self.bufferMin <= self.bufferMax").message("bufferMin must be less than or equal to bufferMax").field_path(".bufferMin"))]
#[serde(rename_all = "camelCase")]
pub struct PoolCapacity {
    /// Fewest agents, kept even when idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub pool_min: Option<i32>,
    /// Most agents the pool may grow to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub pool_max: Option<i32>,
    /// Fewest free agents (hosting no sandbox) kept warm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub buffer_min: Option<i32>,
    /// Most free agents kept; extra free agents are drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub buffer_max: Option<i32>,
}

/// Capacity with defaults applied, for the controller's arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectiveCapacity {
    /// Fewest agents.
    pub pool_min: u32,
    /// Most agents.
    pub pool_max: u32,
    /// Fewest free agents.
    pub buffer_min: u32,
    /// Most free agents.
    pub buffer_max: u32,
}

impl PoolCapacity {
    /// Defaults: poolMin 0, poolMax max(poolMin, 10), bufferMin 0,
    /// bufferMax max(bufferMin, poolMax). Negative values count as 0.
    pub fn effective(&self) -> EffectiveCapacity {
        let clamp = |v: Option<i32>| v.map(|v| v.max(0) as u32);
        let pool_min = clamp(self.pool_min).unwrap_or(0);
        let pool_max = clamp(self.pool_max)
            .unwrap_or(pool_min.max(10))
            .max(pool_min);
        let buffer_min = clamp(self.buffer_min).unwrap_or(0);
        let buffer_max = clamp(self.buffer_max).unwrap_or(pool_max).max(buffer_min);
        EffectiveCapacity {
            pool_min,
            pool_max,
            buffer_min,
            buffer_max,
        }
    }
}

impl SandboxPoolSpec {
    /// Slots per agent with the default applied.
    pub fn slots_per_agent(&self) -> u32 {
        self.max_sandboxes_per_agent
            .unwrap_or(DEFAULT_SLOTS_PER_AGENT)
            .max(1) as u32
    }
}

/// Observed state of a pool, written by the pool controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxPoolStatus {
    /// Agent pods that exist (the `/scale` status replicas).
    #[serde(default)]
    pub agents: i32,
    /// Agent pods that are ready.
    #[serde(default)]
    pub ready_agents: i32,
    /// Agent pods marked draining.
    #[serde(default)]
    pub draining_agents: i32,
    /// Slots over all ready agents.
    #[serde(default)]
    pub slots_total: i32,
    /// Slots taken by bound sandboxes.
    #[serde(default)]
    pub slots_used: i32,
    /// Label selector of the agent pods, for `/scale` and HPA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// `Ready` and `Scaling`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// `metadata.generation` this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
