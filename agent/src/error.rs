//! The agent's error type. Every variant maps to one wire [`ErrorCode`], so
//! the controller branches on codes, never on messages.

use fast_sandbox_api::agent::{ApiError, ErrorCode};
use fast_sandbox_api::validation::FieldErrors;

/// What can go wrong while serving a sandbox request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request failed validation; the first field is reported on the wire.
    #[error("invalid request: {0}")]
    Invalid(FieldErrors),
    /// No sandbox with this UID on this agent.
    #[error("sandbox {0} not found")]
    NotFound(String),
    /// The image is not in the node's containerd (the agent never pulls).
    #[error("image {image} is not present on the node: {why}")]
    ImageNotPresent {
        /// Normalised reference.
        image: String,
        /// What is missing (the image, or its unpacked layers).
        why: String,
    },
    /// The OCI runtime made the container but could not start its process
    /// (missing or non-executable command, missing working directory).
    #[error("the sandbox's process could not be started: {0}")]
    StartFailed(String),
    /// containerd could not start the shim of the agent's runtime: it is not
    /// installed on the node, or it fails before any sandbox code runs.
    #[error("the node's containerd cannot run runtime {runtime}: {why}")]
    RuntimeUnavailable {
        /// containerd's runtime name (`io.containerd.runsc.v1`).
        runtime: String,
        /// containerd's message.
        why: String,
    },
    /// The sandbox asks for egress and this agent cannot give it a network.
    #[error("this agent cannot give the sandbox egress: {0}")]
    EgressUnavailable(String),
    /// All slots are taken.
    #[error("all {0} slots of this agent are taken")]
    CapacityExceeded(u32),
    /// The UID exists with another spec.
    #[error("{0}")]
    Conflict(String),
    /// The sandbox's container id is taken by a container another agent
    /// pod created (a leftover of an agent that is gone, or a sandbox that
    /// still runs on another agent of the node). The agent never touches it
    /// on a create; the janitor collects it once its agent is gone.
    #[error(
        "container {id} already exists in containerd, created by agent pod {owner}; \
         if that agent is gone, the node janitor (POST {janitor}) removes it",
        janitor = fast_sandbox_api::agent::PATH_JANITOR
    )]
    ContainerExists {
        /// Container id.
        id: String,
        /// Pod UID of the agent that created it.
        owner: String,
    },
    /// The sandbox exists but its process does not run; the message says
    /// its state.
    #[error("{0}")]
    SandboxNotRunning(String),
    /// A file operation inside a sandbox failed; `code` follows the errno.
    #[error("{op} {path}: {message}")]
    File {
        /// What was being done (`stat`, `open`, `mkdir`, ...).
        op: &'static str,
        /// The path inside the sandbox.
        path: String,
        /// The wire code.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
    /// A sandbox runs as many execs at once as one may.
    #[error(
        "the sandbox already runs {limit} exec'd processes, as many as one may at once; wait for one to end"
    )]
    TooManyExecs {
        /// The limit.
        limit: usize,
    },
    /// An upload is larger than the agent accepts.
    #[error("the upload is larger than the {limit} bytes this agent accepts (--max-upload-bytes)")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The agent has not rebuilt its state yet, or is shutting down.
    #[error("the agent is not ready: {0}")]
    Unavailable(&'static str),
    /// A containerd call failed.
    #[error("containerd {op} failed: {status}")]
    Containerd {
        /// Which call.
        op: &'static str,
        /// gRPC status returned.
        status: Box<tonic::Status>,
    },
    /// An image's content could not be understood.
    #[error("image {image}: {message}")]
    ImageContent {
        /// Reference or digest.
        image: String,
        /// What is wrong with it.
        message: String,
    },
    /// The OCI runtime spec could not be built.
    #[error("runtime spec: {0}")]
    Spec(String),
    /// A pre-started sandbox could not be used (its init died, hung or
    /// spoke out of turn); the create goes on cold.
    #[error("pre-started sandbox: {0}")]
    Prestarted(String),
    /// A local file operation failed (logs, state dir).
    #[error("{what}: {source}")]
    Io {
        /// What the agent was doing.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps a failed containerd call.
    pub fn containerd(op: &'static str, status: tonic::Status) -> Self {
        Error::Containerd {
            op,
            status: Box::new(status),
        }
    }

    /// A failed file operation inside a sandbox, its code from the errno.
    pub fn file(op: &'static str, path: impl Into<String>, errno: rustix::io::Errno) -> Self {
        use rustix::io::Errno;
        let code = match errno {
            Errno::NOENT => ErrorCode::NotFound,
            Errno::NOTDIR => ErrorCode::NotADirectory,
            Errno::ISDIR => ErrorCode::IsADirectory,
            Errno::ACCESS | Errno::PERM | Errno::ROFS => ErrorCode::PermissionDenied,
            Errno::EXIST => ErrorCode::AlreadyExists,
            Errno::NOTEMPTY => ErrorCode::DirectoryNotEmpty,
            // openat2's refusals: a magic link, or a step out of the root.
            Errno::LOOP | Errno::XDEV | Errno::NAMETOOLONG | Errno::INVAL => {
                ErrorCode::InvalidArgument
            }
            _ => ErrorCode::Internal,
        };
        let message = match errno {
            Errno::XDEV => "the path leads outside the directory it must stay in".to_string(),
            Errno::LOOP => {
                "too many symbolic links, or a link that must not be followed".to_string()
            }
            e => {
                let text = std::io::Error::from(e).to_string();
                text.split(" (os error")
                    .next()
                    .unwrap_or_default()
                    .to_string()
            }
        };
        Error::File {
            op,
            path: path.into(),
            code,
            message,
        }
    }

    /// Wraps a failed file operation.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// The wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Invalid(_) => ErrorCode::InvalidArgument,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::ImageNotPresent { .. } => ErrorCode::ImageNotPresent,
            Error::StartFailed(_) => ErrorCode::StartFailed,
            Error::RuntimeUnavailable { .. } => ErrorCode::RuntimeUnavailable,
            Error::EgressUnavailable(_) => ErrorCode::EgressUnavailable,
            Error::CapacityExceeded(_) => ErrorCode::CapacityExceeded,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::ContainerExists { .. } => ErrorCode::ContainerExists,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::SandboxNotRunning(_) => ErrorCode::SandboxNotRunning,
            Error::File { code, .. } => *code,
            Error::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            Error::TooManyExecs { .. } => ErrorCode::CapacityExceeded,
            Error::Containerd { status, .. } if status.code() == tonic::Code::Unavailable => {
                ErrorCode::Unavailable
            }
            Error::Containerd { .. }
            | Error::ImageContent { .. }
            | Error::Spec(_)
            | Error::Prestarted(_)
            | Error::Io { .. } => ErrorCode::Internal,
        }
    }

    /// Turns a failed task create or start whose cause is the sandbox's own
    /// command or working directory (runc: "unable to start container
    /// process") into [`Error::StartFailed`]; anything else is kept.
    pub fn start_failure(self) -> Self {
        const MARK: &str = "unable to start container process: ";
        match &self {
            Error::Containerd { status, .. } => match status.message().split_once(MARK) {
                Some((_, why)) => {
                    let why = why.trim_end_matches(": unknown").trim();
                    Error::StartFailed(why.to_string())
                }
                None => self,
            },
            _ => self,
        }
    }

    /// Turns a failed task create whose shim of `runtime` could not start
    /// (not on containerd's PATH, or exiting at once) into
    /// [`Error::RuntimeUnavailable`]; anything else, a stale task directory
    /// included, is kept.
    pub fn runtime_failure(self, runtime: &str) -> Self {
        const MARK: &str = "failed to start shim: ";
        match &self {
            Error::Containerd { status, .. } if !self.is_stale_bundle() => {
                match status.message().split_once(MARK) {
                    Some((_, why)) => Error::RuntimeUnavailable {
                        runtime: runtime.to_string(),
                        why: why.trim_end_matches(": unknown").trim().to_string(),
                    },
                    None => self,
                }
            }
            _ => self,
        }
    }

    /// Whether a containerd call failed because the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Containerd { status, .. } if status.code() == tonic::Code::NotFound)
    }

    /// Whether a task create failed because containerd still holds the
    /// directory of a task it lost in a crash (`mkdir ...: file exists`);
    /// a live task is `AlreadyExists` instead.
    pub fn is_stale_bundle(&self) -> bool {
        matches!(self, Error::Containerd { status, .. }
            if status.code() != tonic::Code::AlreadyExists
                && status.message().contains("mkdir ")
                && status.message().contains("file exists"))
    }

    /// Whether a containerd call failed because the object already exists.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::Containerd { status, .. } if status.code() == tonic::Code::AlreadyExists)
    }

    /// The wire form, naming the field for invalid requests.
    pub fn to_api(&self) -> ApiError {
        match self {
            Error::Invalid(errs) => match errs.first() {
                Some(first) => ApiError {
                    code: ErrorCode::InvalidArgument,
                    message: errs.to_string(),
                    field: Some(first.field.clone()),
                },
                None => ApiError::new(ErrorCode::InvalidArgument, "invalid request"),
            },
            other => ApiError::new(other.code(), other.to_string()),
        }
    }
}

/// Result of agent operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use fast_sandbox_api::validation::FieldError;

    #[test]
    fn invalid_names_the_first_field() {
        let e = Error::Invalid(FieldErrors(vec![
            FieldError {
                field: "env[1].name".into(),
                message: "bad".into(),
            },
            FieldError {
                field: "command[0]".into(),
                message: "empty".into(),
            },
        ]));
        let api = e.to_api();
        assert_eq!(api.code, ErrorCode::InvalidArgument);
        assert_eq!(api.field.as_deref(), Some("env[1].name"));
        assert!(api.message.contains("command[0]"));
    }

    #[test]
    fn containerd_not_found_is_recognised() {
        let e = Error::containerd("get task", tonic::Status::not_found("no task"));
        assert!(e.is_not_found());
        assert_eq!(e.code(), ErrorCode::Internal);
        let e = Error::containerd("get task", tonic::Status::unavailable("down"));
        assert_eq!(e.code(), ErrorCode::Unavailable);
    }

    #[test]
    fn runc_exec_failures_are_start_failures() {
        let msg = "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"/nope\": stat /nope: no such file or directory: unknown";
        let e = Error::containerd("create task", tonic::Status::unknown(msg)).start_failure();
        assert_eq!(e.code(), ErrorCode::StartFailed);
        assert_eq!(
            e.to_string(),
            "the sandbox's process could not be started: exec: \"/nope\": stat /nope: no such file or directory"
        );
        let other = Error::containerd("create task", tonic::Status::unknown("shim died"));
        assert_eq!(other.start_failure().code(), ErrorCode::Internal);
    }

    #[test]
    fn a_shim_that_cannot_start_is_an_unavailable_runtime() {
        let msg = "failed to start shim: start failed: io.containerd.runsc.v1: failed to set OOM Score on shim: write /proc/1/oom_score_adj: permission denied: exit status 1: unknown";
        let e = Error::containerd("create task", tonic::Status::unknown(msg))
            .runtime_failure("io.containerd.runsc.v1");
        assert_eq!(e.code(), ErrorCode::RuntimeUnavailable);
        assert!(!e.code().is_retryable());
        assert_eq!(
            e.to_string(),
            "the node's containerd cannot run runtime io.containerd.runsc.v1: start failed: io.containerd.runsc.v1: failed to set OOM Score on shim: write /proc/1/oom_score_adj: permission denied: exit status 1"
        );
        let stale = "failed to start shim: mkdir /run/containerd/io.containerd.runtime.v2.task/k8s.io/sandbox-u1: file exists";
        let kept = Error::containerd("create task", tonic::Status::unknown(stale))
            .runtime_failure("io.containerd.runc.v2");
        assert!(
            kept.is_stale_bundle(),
            "a stale directory is retried under a fresh id"
        );
        let other = Error::containerd("create task", tonic::Status::unknown("shim died"));
        assert_eq!(other.runtime_failure("x").code(), ErrorCode::Internal);
    }

    #[test]
    fn a_dead_tasks_directory_is_told_from_a_live_task() {
        let msg = "failed to start shim: mkdir /run/containerd/io.containerd.runtime.v2.task/k8s.io/sandbox-u1: file exists";
        assert!(Error::containerd("create task", tonic::Status::unknown(msg)).is_stale_bundle());
        let live = tonic::Status::already_exists("task sandbox-u1: already exists");
        assert!(!Error::containerd("create task", live).is_stale_bundle());
        let other = tonic::Status::unknown("shim died");
        assert!(!Error::containerd("create task", other).is_stale_bundle());
    }
}
