//! The `Sandbox` custom resource: one short-lived container started on a
//! warm agent.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a Sandbox. Everything but `agentRef` and
/// `resetRevision` is fixed once the sandbox is bound.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "sandbox.fast.io",
    version = "v1alpha1",
    kind = "Sandbox",
    namespaced,
    status = "SandboxStatus",
    shortname = "sbx",
    category = "fast-sandbox",
    derive = "PartialEq",
    derive = "Default",
    doc = "A container started in tens of milliseconds on a warm agent pod of a SandboxPool.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Agent", type_ = "string", json_path = ".spec.agentRef.podName"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.agentRef.nodeName"),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.poolRef",
    selectable = ".status.phase"
)]
#[x_kube(validation = Rule::new("!has(oldSelf.agentRef) || !has(self.agentRef) || self.agentRef == oldSelf.agentRef").message("agentRef is set once at binding; only the controller may clear it to re-place the sandbox").field_path(".agentRef"))]
#[x_kube(validation = Rule::new("!(has(self.expireTime) && has(self.ttlSecondsAfterFinished))").message("set at most one of expireTime and ttlSecondsAfterFinished"))]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    /// Image to run. It must already be present on the agent's node (zero
    /// pull); `busybox` means `docker.io/library/busybox:latest`.
    #[schemars(length(min = 1, max = 4096))]
    pub image: String,
    /// Entrypoint override; the image's entrypoint when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub command: Vec<String>,
    /// Arguments to the entrypoint; the image's cmd when both are empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4096))]
    pub args: Vec<String>,
    /// Environment variables, appended to the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub env: Vec<EnvVar>,
    /// Working directory; the image's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub working_dir: Option<String>,
    /// Name of the SandboxPool in the same namespace whose agents run this.
    #[schemars(length(min = 1, max = 253))]
    pub pool_ref: String,
    /// Limits enforced in the sandbox's own cgroup, nested under its agent
    /// pod's cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<SandboxResources>,
    /// Ports the sandbox listens on (on its loopback or any address); each is
    /// forwarded by its agent and reported in `status.endpoints`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub exposed_ports: Vec<ExposedPort>,
    /// The sandbox's network: loopback only unless `mode: Egress`. Unset:
    /// the pool's `defaultNetwork`, written into the spec at admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::SandboxNetwork>,
    /// Absolute time after which the sandbox is stopped and deleted
    /// (RFC 3339, at most nine fractional digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::date_time")]
    pub expire_time: Option<Time>,
    /// Seconds after the sandbox finishes (Succeeded or Failed) before it is
    /// deleted (at most 2147483647, as a Job's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub ttl_seconds_after_finished: Option<i64>,
    /// Seconds between SIGTERM and SIGKILL when the sandbox is deleted or
    /// reset (at most 300). Unset: the agent's default (10). A custom
    /// resource's deletion drops the `gracePeriodSeconds` of the delete
    /// call, so this is where a sandbox says it. A process that is PID 1
    /// and sets no handler (a plain `sleep`) ignores SIGTERM and waits out
    /// the whole period: 0 frees its slot at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 300))]
    pub termination_grace_period_seconds: Option<i64>,
    /// What happens when the agent running the sandbox is lost.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Bump to recreate the container from scratch on the same agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub reset_revision: Option<i64>,
    /// The agent this sandbox is bound to. Written by the admission webhook;
    /// users leave it unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_ref: Option<AgentRef>,
}

/// One environment variable. Only literal values: a sandbox has no access
/// to Secrets or ConfigMaps of the agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name (C identifier characters, `.` and `-` allowed as in Pods).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Value; empty when unset.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub value: String,
}

/// cgroup limits of one sandbox.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxResources {
    /// CPU limit as a Kubernetes quantity (`500m`, `2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::quantity")]
    pub cpu: Option<Quantity>,
    /// Memory limit as a Kubernetes quantity (`64Mi`, `1Gi`); the kernel
    /// OOM-kills the sandbox above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::quantity")]
    pub memory: Option<Quantity>,
    /// Maximum number of processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4194304))]
    pub pids: Option<i64>,
    /// Size cap of the writable layer as a Kubernetes quantity (`256Mi`):
    /// the layer is then kept in memory, charged to the sandbox's memory,
    /// and the sandbox fails as `EphemeralStorageExceeded` past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::quantity")]
    pub ephemeral_storage: Option<Quantity>,
}

/// A port the sandbox's process listens on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExposedPort {
    /// Optional name, reported with the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// Port number, 1..65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// TCP (default); UDP is refused for now.
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// Transport protocol of an exposed port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum PortProtocol {
    /// TCP.
    #[default]
    TCP,
    /// UDP.
    UDP,
}

/// What the controller does when a sandbox's agent is lost.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailurePolicy {
    /// Leave the sandbox `Lost` for the user to inspect and delete.
    #[default]
    Manual,
    /// Re-place the sandbox on another agent of the pool and start it again.
    AutoRecreate,
}

/// The binding of a sandbox to one agent pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentRef {
    /// Name of the agent pod (same namespace as the sandbox).
    #[schemars(length(min = 1))]
    pub pod_name: String,
    /// Node the agent pod runs on.
    #[serde(default)]
    pub node_name: String,
    /// Set when the admission webhook made this binding as the sandbox was
    /// created; a binding the controller makes later (a re-placement) leaves
    /// it unset. No other agent can have held a sandbox bound at admission,
    /// so its agent skips the node-wide look for another's container of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub at_admission: bool,
}

/// Lifecycle phase of a sandbox.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum SandboxPhase {
    /// Admitted but not bound: no agent had a free slot.
    #[default]
    Pending,
    /// Bound to an agent; the container is being created.
    Bound,
    /// The container runs.
    Running,
    /// The process exited with code 0.
    Succeeded,
    /// The process exited non-zero, was killed, or could not start.
    Failed,
    /// Deletion in progress: the container is being stopped.
    Terminating,
    /// The agent is gone or unreachable; see `failurePolicy`.
    Lost,
}

impl SandboxPhase {
    /// Finished phases: the container will not run again unless recreated.
    pub fn is_finished(self) -> bool {
        matches!(self, SandboxPhase::Succeeded | SandboxPhase::Failed)
    }

    /// The phase as written in `status.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxPhase::Pending => "Pending",
            SandboxPhase::Bound => "Bound",
            SandboxPhase::Running => "Running",
            SandboxPhase::Succeeded => "Succeeded",
            SandboxPhase::Failed => "Failed",
            SandboxPhase::Terminating => "Terminating",
            SandboxPhase::Lost => "Lost",
        }
    }
}

impl std::fmt::Display for SandboxPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an exposed port can be reached.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxEndpoint {
    /// The port's name, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `address:port` to connect to: the agent pod's IP and a port the agent
    /// forwards to the sandbox's port, reachable wherever pod IPs are.
    pub address: String,
    /// TCP or UDP.
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// Observed state of a sandbox, written by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SandboxPhase>,
    /// `Scheduled` and `Ready`, per Kubernetes conventions, so
    /// `kubectl wait --for=condition=Ready` works.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// containerd container id on the node.
    #[serde(
        default,
        rename = "containerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_id: Option<String>,
    /// Node the container runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// When the process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Exit code of the process once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Machine-readable reason for the current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Addresses of the exposed ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<SandboxEndpoint>,
    /// `metadata.generation` this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `spec.resetRevision` the running container was created for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_reset_revision: Option<i64>,
}

impl Sandbox {
    /// The phase, `Pending` when no status was written yet.
    pub fn phase(&self) -> SandboxPhase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or_default()
    }

    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
    }

    /// `spec.terminationGracePeriodSeconds` as the agent takes it, kept
    /// within the range admission enforces; `None` for the agent's default.
    pub fn termination_grace(&self) -> Option<std::time::Duration> {
        self.spec.termination_grace_period_seconds.map(|s| {
            let s = s.clamp(0, crate::validation::MAX_TERMINATION_GRACE_SECONDS);
            std::time::Duration::from_secs(s.unsigned_abs())
        })
    }
}
