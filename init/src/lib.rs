//! The protocol between the agent and the init of a pre-started sandbox.
//!
//! A pre-started sandbox is a container whose task already runs: namespaces,
//! mounts, cgroup, seccomp and capabilities are in place, and its process is
//! our init, waiting. The agent's per-container directory is bind-mounted
//! read-only at [`MOUNT_DIR`]; it holds the init itself and two FIFOs:
//!
//! - [`LAUNCH`], agent to init: one [`launch::Launch`] message (argv, env,
//!   working directory, rlimits). The agent holds it open read-write, so
//!   the init never sees end-of-file while the agent lives; when an agent
//!   dies mid-message the init drops what it read and waits for the next
//!   agent's message.
//! - [`STATUS`], init to agent: [`READY`] each time the init starts waiting
//!   for a message, then [`EXECUTING`] right before `execve`. The init holds
//!   its end close-on-exec, so a successful exec reads as end-of-file; a
//!   failure writes [`FAILED`] and the reason, then the init exits with
//!   [`EXIT_FAILED`].
#![forbid(unsafe_code)]
#![deny(missing_docs, rust_2018_idioms)]

pub mod launch;

/// Where the agent's per-container directory is mounted in a pre-started
/// sandbox: on the `/dev` tmpfs, so the image's root filesystem is never
/// touched.
pub const MOUNT_DIR: &str = "/dev/.fast-sandbox";
/// File name of the init in that directory.
pub const INIT: &str = "init";
/// File name of the launch FIFO.
pub const LAUNCH: &str = "launch";
/// File name of the status FIFO.
pub const STATUS: &str = "status";
/// Status byte: the init waits for a launch message.
pub const READY: u8 = b'R';
/// Status byte: the init is about to exec the sandbox's command.
pub const EXECUTING: u8 = b'X';
/// Status byte: the launch failed; the reason follows as UTF-8.
pub const FAILED: u8 = b'E';
/// Exit status of an init whose launch failed.
pub const EXIT_FAILED: i32 = 127;
/// Exit status of an init that could not open its FIFOs.
pub const EXIT_SETUP: i32 = 126;
