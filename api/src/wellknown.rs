//! Every label, annotation, finalizer, condition type and reason the system
//! writes, in one place, so components never disagree on a spelling.

/// API group of the custom resources.
pub const GROUP: &str = "sandbox.fast.io";
/// API version of the custom resources.
pub const VERSION: &str = "v1alpha1";
/// API group of the access API (an aggregated API server): sandboxes'
/// `log`, `exec` and `files`, which a CRD cannot serve.
pub const SUBRESOURCE_GROUP: &str = "subresources.sandbox.fast.io";
/// Category that makes `kubectl get fast-sandbox` list pools and sandboxes.
pub const CATEGORY: &str = "fast-sandbox";

/// Finalizer the webhook adds at bind time; the controller removes it once
/// the container is gone from the agent, so no container outlives its object.
pub const FINALIZER: &str = "sandbox.fast.io/cleanup";
/// Finalizer the controller puts on every SandboxPool; it removes it once
/// the pool's agent pods (in the operator's namespace, where no owner
/// reference can reach across) are gone.
pub const POOL_FINALIZER: &str = "sandbox.fast.io/agents";

/// Label on a Sandbox naming the agent pod it is bound to (selectable with
/// `kubectl get sbx -l sandbox.fast.io/agent=<pod>`).
pub const LABEL_AGENT: &str = "sandbox.fast.io/agent";
/// Label on agent pods and sandboxes naming their pool.
pub const LABEL_POOL: &str = "sandbox.fast.io/pool";
/// Label on agent pods naming their pool's namespace: agent pods live in
/// the operator's namespace, not their pool's.
pub const LABEL_POOL_NAMESPACE: &str = "sandbox.fast.io/pool-namespace";
/// Label on agent pods with the UID of their pool: a pool deleted and
/// created again under the same name never adopts the old pool's agents.
pub const LABEL_POOL_UID: &str = "sandbox.fast.io/pool-uid";
/// Label on pods the pool controller creates; value [`ROLE_AGENT`].
pub const LABEL_ROLE: &str = "sandbox.fast.io/role";
/// Value of [`LABEL_ROLE`] for agent pods.
pub const ROLE_AGENT: &str = "agent";

/// Annotation with the RFC 3339 time the webhook bound the sandbox; the start
/// of the create→Running latency the controller measures.
pub const ANNOTATION_BOUND_AT: &str = "sandbox.fast.io/bound-at";
/// Annotation on an agent pod marking it draining: placement skips it and the
/// pool controller deletes it once it hosts no sandbox.
pub const ANNOTATION_DRAINING: &str = "sandbox.fast.io/draining";
/// Annotation on an agent pod with its slot count, copied from the pool so
/// placement needs no pool lookup.
pub const ANNOTATION_SLOTS: &str = "sandbox.fast.io/slots";

/// Annotation the webhook writes with the id of the slot reservation it made
/// at admission (the admission request UID: on CREATE the object has no UID
/// yet). Placement indexes use it to turn their reservation into the
/// sandbox's binding once the stored object shows up on their watch.
pub const ANNOTATION_RESERVATION: &str = "sandbox.fast.io/reservation";

/// Labels the agent puts on every containerd container it creates, so that a
/// restarted agent rebuilds its state from containerd alone.
pub mod container_labels {
    /// UID of the Sandbox object; the idempotency key at every hop.
    pub const SANDBOX_UID: &str = "sandbox.fast.io/uid";
    /// Name of the Sandbox object.
    pub const SANDBOX_NAME: &str = "sandbox.fast.io/name";
    /// Namespace of the Sandbox object.
    pub const SANDBOX_NAMESPACE: &str = "sandbox.fast.io/namespace";
    /// Pool of the Sandbox.
    pub const POOL: &str = "sandbox.fast.io/pool";
    /// UID of the agent pod that created the container; fences a janitor so
    /// it only collects containers of agents that no longer exist.
    pub const AGENT_UID: &str = "sandbox.fast.io/agent-uid";
    /// The sandbox's `resetRevision` when the container was created.
    pub const RESET_REVISION: &str = "sandbox.fast.io/reset-revision";
    /// Marks a container as managed by Fast Sandbox.
    pub const MANAGED: &str = "sandbox.fast.io/managed";
    /// The cap of the sandbox's writable layer in bytes, when it has one,
    /// so a restarted agent keeps enforcing it.
    pub const EPHEMERAL_STORAGE: &str = "sandbox.fast.io/ephemeral-storage";
    /// The sandbox's exposed ports (JSON), so a restarted agent forwards
    /// them again.
    pub const EXPOSED_PORTS: &str = "sandbox.fast.io/exposed-ports";
    /// Marks a pre-started container (value: the image digest it was built
    /// from). Without a sandbox UID it is stock, never a sandbox; with one
    /// it is a claimed sandbox whose process may still be the init.
    pub const PRESTARTED: &str = "sandbox.fast.io/prestarted";
    /// When a pre-started container was claimed (RFC 3339): a restarted
    /// agent reports it as the sandbox's start, not the stock's build.
    pub const CLAIMED_AT: &str = "sandbox.fast.io/claimed-at";
    /// The first host id of the user namespace slot the container holds
    /// (its lease is `fast-sandbox-userns-<id>`), when it runs in one.
    pub const USERNS_SLOT: &str = "sandbox.fast.io/userns-slot";
}

/// Condition types on Sandbox and SandboxPool status.
pub mod condition {
    /// Sandbox: bound to an agent.
    pub const SCHEDULED: &str = "Scheduled";
    /// Sandbox: its container runs; Pool: at least `poolMin` agents are ready.
    pub const READY: &str = "Ready";
    /// Pool: the controller is adding or removing agents.
    pub const SCALING: &str = "Scaling";
    /// Pool: growth stopped at the caps the operator set for its namespace.
    pub const CAPACITY_LIMITED: &str = "CapacityLimited";
}

/// Machine-readable reasons for conditions, Events and `status.reason`.
pub mod reason {
    /// Bound by the admission webhook.
    pub const BOUND: &str = "Bound";
    /// No ready agent of the pool had a free slot; the pool grows.
    pub const NO_CAPACITY: &str = "NoCapacity";
    /// The named pool does not exist (yet) in the namespace.
    pub const POOL_NOT_FOUND: &str = "PoolNotFound";
    /// Waiting for the agent to start the container.
    pub const CREATING: &str = "Creating";
    /// The container runs.
    pub const STARTED: &str = "Started";
    /// The process exited with code 0.
    pub const COMPLETED: &str = "Completed";
    /// The process exited with a non-zero code.
    pub const ERROR: &str = "Error";
    /// The kernel killed the process for exceeding its memory limit.
    pub const OOM_KILLED: &str = "OOMKilled";
    /// The agent killed the sandbox for writing past its
    /// `resources.ephemeralStorage`.
    pub const EPHEMERAL_STORAGE_EXCEEDED: &str = "EphemeralStorageExceeded";
    /// The image is not present on the node; zero-pull is the contract.
    pub const IMAGE_NOT_PRESENT: &str = "ImageNotPresent";
    /// The process could not be started (missing or non-executable
    /// command, missing working directory).
    pub const START_ERROR: &str = "StartError";
    /// The node's containerd cannot run the pool's `runtime` (its shim is
    /// missing or fails to start); the message says why.
    pub const RUNTIME_UNAVAILABLE: &str = "RuntimeUnavailable";
    /// The sandbox asks for `network.mode: Egress` and its agent cannot
    /// give it a network; the message says why.
    pub const EGRESS_UNAVAILABLE: &str = "EgressUnavailable";
    /// The agent refused the sandbox for lack of slots; it will be re-placed.
    pub const CAPACITY_EXCEEDED: &str = "CapacityExceeded";
    /// The sandbox was bound to an agent of another pool; it is re-placed.
    pub const AGENT_OF_ANOTHER_POOL: &str = "AgentOfAnotherPool";
    /// The agent pod is gone or unreachable past the grace period.
    pub const AGENT_LOST: &str = "AgentLost";
    /// The sandbox's pool was deleted: its agents stopped the sandbox.
    pub const POOL_DELETED: &str = "PoolDeleted";
    /// `expireTime` or `ttlSecondsAfterFinished` passed.
    pub const EXPIRED: &str = "Expired";
    /// The agent rejected the sandbox's spec.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The sandbox is being deleted from its agent.
    pub const TERMINATING: &str = "Terminating";
    /// Pool: enough agents are ready.
    pub const POOL_READY: &str = "AgentsReady";
    /// Pool: fewer than `poolMin` agents are ready.
    pub const POOL_NOT_READY: &str = "AgentsNotReady";
    /// Pool: the namespace holds as many agents or slots as its cap allows.
    pub const NAMESPACE_CAP_REACHED: &str = "NamespaceCapReached";
    /// Pool: its growth is within the namespace's caps.
    pub const WITHIN_CAPS: &str = "WithinCaps";
    /// Pool: the apiserver refused to create an agent pod from its
    /// `agentTemplate` (the message is the apiserver's).
    pub const AGENT_POD_REFUSED: &str = "AgentPodRefused";
}
