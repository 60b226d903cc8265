//! Wire types of the agent's HTTPS API, version `v1`.
//!
//! Its clients are the controller and the access server, each with a
//! client certificate the agent checks by name. Every request and response body is
//! JSON; the event stream is newline-delimited JSON. Every sandbox is named
//! by the UID of its Sandbox object, the idempotency key at every hop.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | POST | `/v1/sandboxes` | [`CreateSandboxRequest`] | 201 (created) or 200 (already there) [`SandboxInfo`] |
//! | GET | `/v1/sandboxes` | | [`ListSandboxesResponse`] |
//! | GET | `/v1/sandboxes/{uid}` | | [`SandboxInfo`] |
//! | DELETE | `/v1/sandboxes/{uid}?gracePeriodSeconds=N` | | 200 [`SandboxInfo`]; 404 when already gone |
//! | GET | `/v1/sandboxes/{uid}/logs?follow=true&stream=stdout` | | `text/plain` stream |
//! | GET | `/v1/events` | | stream of [`SandboxEvent`], one JSON per line |
//! | GET | `/v1/images` | | [`ImageCacheReport`] |
//! | GET | `/v1/info` | | [`AgentInfo`] |
//! | POST | `/v1/janitor` | [`JanitorRequest`] | 200 [`JanitorReport`] |
//! | DELETE | `/v1/stock` | | 200 [`StockReleased`] |
//! | POST | `/v1/sandboxes/{uid}/exec` | exec frames | 200 exec frames (see [`crate::exec`]) |
//! | GET, PUT, POST, DELETE | `/v1/sandboxes/{uid}/files?path=P&op=…` | | see [`crate::files`] |
//!
//! Errors are [`ApiError`] with a machine-readable [`ErrorCode`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::sandbox::{EnvVar, ExposedPort};

/// Largest payload of one exec frame (see [`crate::exec`]).
pub use crate::exec::MAX_FRAME_PAYLOAD;

/// Prefix of every versioned path.
pub const API_PREFIX: &str = "/v1";
/// Collection of sandboxes.
pub const PATH_SANDBOXES: &str = "/v1/sandboxes";
/// Event stream.
pub const PATH_EVENTS: &str = "/v1/events";
/// Image cache report.
pub const PATH_IMAGES: &str = "/v1/images";
/// Agent identity and capacity.
pub const PATH_INFO: &str = "/v1/info";
/// Node janitor: collects containers of agent pods that no longer exist.
pub const PATH_JANITOR: &str = "/v1/janitor";
/// The agent's pre-started sandboxes: deleting them retires the stock
/// before the agent's pod goes (a restarted agent keeps its stock, so the
/// agent cannot tell its own end from a restart).
pub const PATH_STOCK: &str = "/v1/stock";
/// Port the agent serves its API on.
pub const DEFAULT_PORT: u16 = 9443;
/// Content type of the event stream.
pub const NDJSON: &str = "application/x-ndjson";

/// Path of one sandbox.
pub fn sandbox_path(uid: &str) -> String {
    format!("{PATH_SANDBOXES}/{uid}")
}

/// Path that ends the exec a client named `session` (see
/// [`crate::exec::ExecRequest::session`]) as if its client had gone.
pub fn exec_session_path(uid: &str, session: &str) -> String {
    format!("{PATH_SANDBOXES}/{uid}/exec/{session}")
}

/// Path of one sandbox's logs.
pub fn logs_path(uid: &str) -> String {
    format!("{PATH_SANDBOXES}/{uid}/logs")
}

/// Path of an exec in one sandbox (see [`crate::exec`]).
pub fn exec_path(uid: &str) -> String {
    format!("{PATH_SANDBOXES}/{uid}/exec")
}

/// Ask an agent to start a sandbox. Sending the same `uid` twice returns the
/// existing sandbox rather than starting a second one.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandboxRequest {
    /// UID of the Sandbox object.
    pub uid: String,
    /// Name of the Sandbox object.
    pub name: String,
    /// Namespace of the Sandbox object.
    pub namespace: String,
    /// Pool the sandbox belongs to.
    pub pool: String,
    /// Image reference; must be present on the node.
    pub image: String,
    /// Entrypoint override.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment, appended to the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Working directory override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// cgroup limits.
    #[serde(default)]
    pub limits: ResourceLimits,
    /// Ports the process listens on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<ExposedPort>,
    /// Network beyond loopback; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::SandboxNetwork>,
    /// `spec.resetRevision` of the object; a different revision for the same
    /// UID replaces the container.
    #[serde(default)]
    pub reset_revision: i64,
    /// The sandbox is bound where admission bound it (`agentRef.atAdmission`):
    /// no other agent of the node can hold a container of it, so a claim
    /// skips looking for one. Unset (the default), the agent looks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub first_placement: bool,
}

/// Limits in the units a cgroup takes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceLimits {
    /// CPU in millicores (CFS quota over a 100 ms period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// Memory in bytes (hard limit; the kernel OOM-kills above it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Maximum number of tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
    /// Size cap of the writable layer in bytes (a tmpfs upper layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage_bytes: Option<u64>,
}

/// State of a sandbox's container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ContainerState {
    /// Container created, process not started yet.
    #[default]
    Created,
    /// Process running.
    Running,
    /// Process exited; see `exitCode` and `reason`.
    Exited,
    /// containerd could not say.
    Unknown,
}

/// What the agent knows about one sandbox.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxInfo {
    /// UID of the Sandbox object.
    pub uid: String,
    /// Name of the Sandbox object.
    pub name: String,
    /// Namespace of the Sandbox object.
    pub namespace: String,
    /// Pool of the sandbox.
    #[serde(default)]
    pub pool: String,
    /// containerd container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Image as requested.
    pub image: String,
    /// Container state.
    pub state: ContainerState,
    /// Host PID of the process while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Exit code once exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// `Completed`, `Error` or `OOMKilled` once exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the container was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// When the process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Reset revision the container was created for.
    #[serde(default)]
    pub reset_revision: i64,
    /// Where its exposed ports are reachable while it runs: the agent pod's
    /// address and a port the agent forwards into the sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<crate::sandbox::SandboxEndpoint>,
}

/// Identity and capacity of an agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentInfo {
    /// Name of the agent pod.
    pub pod_name: String,
    /// UID of the agent pod.
    pub pod_uid: String,
    /// Node the agent runs on.
    pub node_name: String,
    /// Slots (`maxSandboxesPerAgent`).
    pub slots_total: u32,
    /// Slots taken by sandboxes that exist on this agent.
    pub slots_used: u32,
    /// False until the agent rebuilt its state from containerd.
    pub ready: bool,
    /// Agent build version.
    pub version: String,
}

/// Answer of `GET /v1/sandboxes`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ListSandboxesResponse {
    /// The agent.
    pub agent: AgentInfo,
    /// Every sandbox the agent holds.
    pub sandboxes: Vec<SandboxInfo>,
    /// Sequence number of the last event emitted before this list, so a
    /// client can follow `/v1/events?since=<seq>` without a gap.
    #[serde(default)]
    pub last_event_seq: u64,
}

/// Kind of a sandbox state change.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The process started.
    Started,
    /// The process exited (code in the sandbox info).
    Exited,
    /// The process was killed by the kernel for exceeding its memory limit.
    OomKilled,
    /// The container was deleted.
    Deleted,
    /// Keep-alive without a sandbox, sent when nothing happened for a while so
    /// clients can tell a quiet agent from a dead connection.
    Heartbeat,
}

/// One state change, as a line of `GET /v1/events`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxEvent {
    /// Monotonic per agent process; resets when the agent restarts (its
    /// `podUid` and start time tell).
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The sandbox after the change; absent for heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxInfo>,
}

/// Images present on the agent's node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageCacheReport {
    /// Node of the agent.
    pub node_name: String,
    /// containerd namespace the images are in.
    pub namespace: String,
    /// The images.
    pub images: Vec<CachedImage>,
}

/// One image in the node's containerd.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CachedImage {
    /// Name as stored in containerd.
    pub name: String,
    /// Normalised reference (see [`crate::image::normalize`]).
    pub normalized: String,
    /// Digest of the image's target (manifest or index).
    pub digest: String,
    /// Bytes of the image's content.
    pub size_bytes: u64,
    /// Last time a sandbox of this agent started from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<DateTime<Utc>>,
}

/// Ask an agent to collect the containers that agents which no longer exist
/// left in the node's containerd (an agent pod that is deleted takes nothing
/// with it: its sandboxes' containers outlive it).
///
/// The agent removes a container only if it carries the
/// [`MANAGED`](crate::wellknown::container_labels::MANAGED) label and its
/// [`AGENT_UID`](crate::wellknown::container_labels::AGENT_UID) label is
/// neither the agent's own pod UID nor one of `live_agent_uids`. Containers
/// of live agents are theirs to manage, even when their sandbox is gone.
///
/// The caller must send the UID of **every** agent pod that exists on the
/// node, from a complete view: an agent missing from the list loses its
/// containers. Sending the same request twice is harmless.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JanitorRequest {
    /// UIDs of every agent pod that exists on the node (within
    /// `namespace` when that is set).
    pub live_agent_uids: Vec<String>,
    /// When set, only containers of sandboxes in this namespace are
    /// considered: a controller watching one namespace knows the live agents
    /// of that namespace only (agents run sandboxes of their own namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What retiring the stock removed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StockReleased {
    /// Pre-started sandboxes removed (container, task, snapshot).
    pub removed: usize,
}

/// What the janitor removed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JanitorReport {
    /// The containers removed (task, container record, rootfs snapshot and
    /// log files), in container id order.
    pub removed: Vec<RemovedContainer>,
}

/// One container the janitor removed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RemovedContainer {
    /// containerd container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// UID of the sandbox it ran (its label; empty if it had none).
    pub sandbox_uid: String,
    /// UID of the agent pod that created it, which no longer exists.
    pub agent_uid: String,
}

/// Machine-readable error code; clients branch on it, never on the message.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A field of the request is invalid (`field` names it).
    InvalidArgument,
    /// No such sandbox.
    NotFound,
    /// The image is not on the node; the agent never pulls.
    ImageNotPresent,
    /// The container was made but its process could not be started (no
    /// such executable, not executable, a working directory that is not
    /// there): the same request fails the same way, so it is not retried.
    StartFailed,
    /// The node's containerd cannot run the agent's runtime: its shim is
    /// not installed or fails to start (the message says why). Every
    /// sandbox of the agent fails the same way, so it is not retried.
    RuntimeUnavailable,
    /// The sandbox asks for `Egress` and its agent cannot give it a
    /// network (the runtime has no place for it, or the agent pod lacks
    /// what NAT needs; the message says which). Not retried.
    EgressUnavailable,
    /// All slots are taken.
    CapacityExceeded,
    /// A sandbox with that UID exists with a different spec.
    Conflict,
    /// The sandbox's container id is taken by a container another agent
    /// pod of the node created (the sandbox ran there before being
    /// re-placed). Retrying succeeds once that agent deleted it or, if the
    /// agent is gone, once the node janitor (`POST /v1/janitor`) collected it.
    ContainerExists,
    /// The agent is not ready (still rebuilding its state) or shutting down.
    Unavailable,
    /// The client certificate is missing or not from the Fast Sandbox CA.
    Unauthenticated,
    /// The sandbox exists but its process does not run (still being
    /// created, or finished: the message says which, with the exit code),
    /// so nothing can be executed in it nor its files reached.
    SandboxNotRunning,
    /// An upload is larger than the agent accepts (`--max-upload-bytes`).
    PayloadTooLarge,
    /// A file operation was refused by the sandbox's file permissions or a
    /// read-only file system.
    PermissionDenied,
    /// A path component that must be a directory is not one.
    NotADirectory,
    /// The path is a directory where a file is needed.
    IsADirectory,
    /// Something other than a directory is already at the path.
    AlreadyExists,
    /// A directory to remove is not empty (and `recursive` was not set).
    DirectoryNotEmpty,
    /// containerd or the agent failed.
    Internal,
}

impl ErrorCode {
    /// HTTP status that carries this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotADirectory | ErrorCode::IsADirectory => 400,
            ErrorCode::Conflict
            | ErrorCode::ContainerExists
            | ErrorCode::SandboxNotRunning
            | ErrorCode::AlreadyExists
            | ErrorCode::DirectoryNotEmpty => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::ImageNotPresent
            | ErrorCode::StartFailed
            | ErrorCode::RuntimeUnavailable
            | ErrorCode::EgressUnavailable => 422,
            ErrorCode::CapacityExceeded => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::ContainerExists
        )
    }
}

/// Error body of every non-2xx answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{code:?}: {message}")]
pub struct ApiError {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// The request field at fault, as a JSON path (`env[2].name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// An error without a field.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// An invalid-argument error naming the field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::InvalidArgument,
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_round_trips_with_code() {
        let e = ApiError::invalid("env[0].name", "bad name");
        let j = serde_json::to_string(&e).unwrap();
        assert_eq!(
            j,
            r#"{"code":"InvalidArgument","message":"bad name","field":"env[0].name"}"#
        );
        assert_eq!(serde_json::from_str::<ApiError>(&j).unwrap(), e);
        assert_eq!(ErrorCode::CapacityExceeded.http_status(), 429);
    }

    #[test]
    fn janitor_wire_names_match_the_other_types() {
        let req = JanitorRequest {
            live_agent_uids: vec!["a".into()],
            namespace: None,
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"liveAgentUids":["a"]}"#
        );
        let scoped = JanitorRequest {
            namespace: Some("team".into()),
            ..req
        };
        assert_eq!(
            serde_json::to_string(&scoped).unwrap(),
            r#"{"liveAgentUids":["a"],"namespace":"team"}"#
        );
        let report = JanitorReport {
            removed: vec![RemovedContainer {
                container_id: "sandbox-s".into(),
                sandbox_uid: "s".into(),
                agent_uid: "a".into(),
            }],
        };
        let j = serde_json::to_string(&report).unwrap();
        assert_eq!(
            j,
            r#"{"removed":[{"containerID":"sandbox-s","sandboxUid":"s","agentUid":"a"}]}"#
        );
        assert_eq!(serde_json::from_str::<JanitorReport>(&j).unwrap(), report);
    }

    #[test]
    fn event_lines_are_single_json_objects() {
        let ev = SandboxEvent {
            seq: 7,
            kind: EventKind::Exited,
            at: DateTime::from_timestamp(0, 0).unwrap(),
            sandbox: Some(SandboxInfo {
                uid: "u".into(),
                exit_code: Some(3),
                state: ContainerState::Exited,
                ..Default::default()
            }),
        };
        let line = serde_json::to_string(&ev).unwrap();
        assert!(!line.contains('\n'));
        assert!(line.contains(r#""containerID":"""#));
        assert_eq!(serde_json::from_str::<SandboxEvent>(&line).unwrap(), ev);
    }
}
