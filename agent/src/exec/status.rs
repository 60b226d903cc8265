//! How an exec ended, as an [`ExecStatus`]: exit codes and kills, and the
//! start failures runc reports for a command that cannot run (127 and 126,
//! as a shell reports them).

use std::time::Duration;

use fast_sandbox_api::exec::{
    EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_TIMEOUT, ExecStatus, reason,
};

use crate::error::{Error, Result};

/// What runc says before why a process could not be started.
const START_MARK: &str = "unable to start container process: ";

/// The stderr line and status of a command runc could not start, or `None`
/// when the failure is not the command's.
/// `cannot change to working directory D: E` from runc's `chdir to cwd
/// ("D") set in config.json failed: E`.
fn working_dir_failure(why: &str) -> Option<String> {
    let rest = why.split_once("chdir to cwd (\"")?.1;
    let (dir, rest) = rest.split_once("\")")?;
    let cause = rest.rsplit_once("failed: ").map_or("failed", |(_, c)| c);
    Some(format!("cannot change to working directory {dir}: {cause}"))
}

pub(super) fn start_failure(e: &Error, command: &str) -> Option<(String, ExecStatus)> {
    let Error::Containerd { status, .. } = e else {
        return None;
    };
    let (_, why) = status.message().split_once(START_MARK)?;
    let why = why.trim_end_matches(": unknown").trim();
    // runc's start helper died inside the sandbox before the command ran:
    // in practice, it could not make its threads under the pids limit.
    let why = if why.contains("init-p") {
        format!(
            "{why} (the runtime's start helper died inside the sandbox; a tight resources.pids leaves it no room for its threads)"
        )
    } else {
        why.to_string()
    };
    // runc's words for a missing working directory name its config file;
    // say it as a shell would.
    let why = match working_dir_failure(&why) {
        Some(said) => said,
        None => why,
    };
    let why = why.as_str();
    let not_found = why.starts_with("exec: ")
        && (why.contains("not found in $PATH") || why.contains("no such file or directory"));
    let (code, reason, line) = if not_found {
        (
            EXIT_NOT_FOUND,
            reason::COMMAND_NOT_FOUND,
            format!("{command}: command not found\n"),
        )
    } else if why.contains("permission denied") {
        (
            EXIT_CANNOT_EXECUTE,
            reason::START_FAILED,
            format!("{command}: permission denied\n"),
        )
    } else if why.starts_with("cannot change to working directory") {
        (
            EXIT_CANNOT_EXECUTE,
            reason::START_FAILED,
            format!("{why}\n"),
        )
    } else {
        (
            EXIT_CANNOT_EXECUTE,
            reason::START_FAILED,
            format!("{command}: cannot execute: {why}\n"),
        )
    };
    Some((
        line,
        ExecStatus {
            exit_code: Some(code),
            reason: reason.to_string(),
            message: why.to_string(),
            signal: None,
        },
    ))
}

/// Why the agent killed an exec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kill {
    /// `timeoutSeconds` passed.
    Timeout(Duration),
    /// The client went away.
    Disconnected,
}

/// The status of an exec that ended with `exit` (containerd's exit status).
pub(super) fn exec_status(exit: Result<u32>, killed: Option<Kill>) -> ExecStatus {
    let code = match exit {
        Ok(code) => i32::try_from(code).unwrap_or(i32::MAX),
        Err(e) => {
            return ExecStatus {
                exit_code: None,
                reason: reason::AGENT_ERROR.into(),
                message: format!("the agent lost track of the process: {e}"),
                signal: None,
            };
        }
    };
    let signal = (129..=192).contains(&code).then(|| code - 128);
    let (exit_code, reason, message) = match killed {
        Some(Kill::Timeout(t)) => (
            EXIT_TIMEOUT,
            reason::TIMEOUT,
            format!("killed after the timeout of {}s", t.as_secs()),
        ),
        Some(Kill::Disconnected) => (
            code,
            reason::KILLED,
            "killed: the client disconnected".to_string(),
        ),
        None if code == 0 => (code, reason::COMPLETED, String::new()),
        None if code == 128 + libc::SIGKILL => (
            code,
            reason::KILLED,
            "killed by SIGKILL (out of memory, or the sandbox is being stopped)".to_string(),
        ),
        None => (
            code,
            reason::ERROR,
            match signal {
                Some(s) => format!("terminated by signal {s}"),
                None => format!("exited with code {code}"),
            },
        ),
    };
    ExecStatus {
        exit_code: Some(exit_code),
        reason: reason.to_string(),
        message,
        signal: if matches!(killed, Some(Kill::Timeout(_))) {
            Some(libc::SIGKILL)
        } else {
            signal
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_working_directory_is_said_plainly() {
        assert_eq!(
            working_dir_failure(
                "exec failed: unable to start container process: chdir to cwd (\"/nonexist\") set in config.json failed: no such file or directory"
            )
            .as_deref(),
            Some("cannot change to working directory /nonexist: no such file or directory")
        );
        assert_eq!(working_dir_failure("exec: \"x\": not found"), None);
    }

    fn containerd_error(msg: &str) -> Error {
        Error::containerd("start exec process", tonic::Status::unknown(msg))
    }

    #[test]
    fn a_missing_command_is_127_and_an_unexecutable_one_126() {
        let e = containerd_error(
            "OCI runtime exec failed: exec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH: unknown",
        );
        let (line, st) = start_failure(&e, "nope").unwrap();
        assert_eq!(line, "nope: command not found\n");
        assert_eq!(st.exit_code, Some(127));
        assert_eq!(st.reason, reason::COMMAND_NOT_FOUND);
        assert!(st.message.contains("\"nope\""), "{st:?}");
        let e = containerd_error(
            "OCI runtime exec failed: exec failed: unable to start container process: exec: \"/x\": stat /x: no such file or directory: unknown",
        );
        assert_eq!(start_failure(&e, "/x").unwrap().1.exit_code, Some(127));
        let e = containerd_error(
            "OCI runtime exec failed: exec failed: unable to start container process: exec: \"/etc/passwd\": permission denied: unknown",
        );
        let (line, st) = start_failure(&e, "/etc/passwd").unwrap();
        assert_eq!(
            (st.exit_code, st.reason.as_str()),
            (Some(126), reason::START_FAILED)
        );
        assert_eq!(line, "/etc/passwd: permission denied\n");
        let e = containerd_error(
            "OCI runtime exec failed: exec failed: unable to start container process: chdir to cwd (\"/nope\") set in config.json failed: no such file or directory: unknown",
        );
        let (line, st) = start_failure(&e, "sh").unwrap();
        assert_eq!(st.exit_code, Some(126));
        assert_eq!(
            line,
            "cannot change to working directory /nope: no such file or directory\n"
        );
        assert!(start_failure(&containerd_error("shim died"), "sh").is_none());
        let e = containerd_error(
            "OCI runtime exec failed: exec failed: unable to start container process: read init-p: connection reset by peer: unknown",
        );
        let st = start_failure(&e, "sh").unwrap().1;
        assert_eq!(st.exit_code, Some(126));
        assert!(st.message.contains("resources.pids"), "{st:?}");
    }

    #[test]
    fn statuses_follow_exit_codes_and_kills() {
        let st = exec_status(Ok(0), None);
        assert_eq!(
            (st.exit_code, st.reason.as_str()),
            (Some(0), reason::COMPLETED)
        );
        let st = exec_status(Ok(42), None);
        assert_eq!(
            (st.exit_code, st.reason.as_str(), st.signal),
            (Some(42), reason::ERROR, None)
        );
        let st = exec_status(Ok(137), Some(Kill::Timeout(Duration::from_secs(3))));
        assert_eq!(
            (st.exit_code, st.reason.as_str(), st.signal),
            (Some(124), reason::TIMEOUT, Some(9))
        );
        let st = exec_status(Ok(137), None);
        assert_eq!((st.reason.as_str(), st.signal), (reason::KILLED, Some(9)));
        let st = exec_status(Ok(143), None);
        assert_eq!((st.reason.as_str(), st.signal), (reason::ERROR, Some(15)));
        let st = exec_status(Ok(137), Some(Kill::Disconnected));
        assert_eq!(st.reason, reason::KILLED);
        let st = exec_status(Err(Error::Unavailable("gone")), None);
        assert_eq!(
            (st.exit_code, st.reason.as_str()),
            (None, reason::AGENT_ERROR)
        );
    }
}
