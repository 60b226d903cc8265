//! `fast-sandbox-init`: the process of a pre-started sandbox. runc started
//! it with the sandbox's namespaces, cgroup, user, capabilities,
//! no-new-privileges and seccomp already applied; it waits for its launch
//! message, sets the rlimits, changes to the working directory and execs
//! the sandbox's command in its place, so the command is PID 1 exactly as
//! on the cold path. See the crate's library for the protocol.
//!
//! Static and dependency-free (the image may have no libc). The only
//! unsafe code is the three libc calls std does not offer.

use std::ffi::{CString, c_char, c_int};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fast_sandbox_init::launch::{Launch, ReadError, Rlimit};
use fast_sandbox_init::{
    EXECUTING, EXIT_FAILED, EXIT_SETUP, FAILED, LAUNCH, MOUNT_DIR, READY, STATUS,
};

/// `struct rlimit` on Linux (`rlim_t` is 64 bits on every 64-bit target).
#[repr(C)]
struct RawRlimit {
    cur: u64,
    max: u64,
}

/// `SIGPIPE` and `SIG_DFL` on Linux.
const SIGPIPE: c_int = 13;
const SIG_DFL: usize = 0;

unsafe extern "C" {
    fn setrlimit(resource: c_int, rlim: *const RawRlimit) -> c_int;
    fn signal(signum: c_int, handler: usize) -> usize;
    fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char)
    -> c_int;
}

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(MOUNT_DIR));
    // Blocks until the agent holds the reading end. Close-on-exec, as
    // every file std opens.
    let Ok(mut status) = OpenOptions::new().write(true).open(dir.join(STATUS)) else {
        std::process::exit(EXIT_SETUP)
    };
    let launch = loop {
        // Blocks until an agent holds the writing end.
        let Ok(mut fifo) = File::open(dir.join(LAUNCH)) else {
            std::process::exit(EXIT_SETUP)
        };
        // No reader (the agent died): the next agent reads READY again.
        let _ = status.write_all(&[READY]);
        match Launch::read_from(&mut fifo) {
            Ok(l) => break l,
            // The agent died mid-message: wait for the next one.
            Err(ReadError::Truncated) => continue,
            Err(e) => fail(&mut status, &e.to_string()),
        }
    };
    let why = launch_process(&launch, &mut status);
    fail(&mut status, &why)
}

fn fail(status: &mut File, why: &str) -> ! {
    let mut msg = vec![FAILED];
    msg.extend_from_slice(why.as_bytes());
    let _ = status.write_all(&msg);
    std::process::exit(EXIT_FAILED)
}

/// An error as Go (and so runc) prints it: lower case, no errno number.
fn errno_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn set_rlimit(r: &Rlimit) -> std::io::Result<()> {
    let raw = RawRlimit {
        cur: r.soft,
        max: r.hard,
    };
    let resource = c_int::try_from(r.resource).map_err(|_| std::io::Error::other("resource"))?;
    // SAFETY: `raw` is a valid `struct rlimit` that outlives the call.
    if unsafe { setrlimit(resource, &raw) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether `p` is a regular file someone may execute.
fn executable(p: &Path) -> std::io::Result<bool> {
    let m = std::fs::metadata(p)?;
    Ok(m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The program `argv0` names: itself when it holds a `/`, else the first
/// executable of that name in `PATH` (runc's lookup, and its messages).
fn look_path(argv0: &str, path: Option<&str>) -> Result<PathBuf, String> {
    if argv0.contains('/') {
        return match executable(Path::new(argv0)) {
            Ok(true) => Ok(PathBuf::from(argv0)),
            Ok(false) => Err(format!("exec: {argv0:?}: permission denied")),
            Err(e) => Err(format!("exec: {argv0:?}: stat {argv0}: {}", errno_text(&e))),
        };
    }
    for d in path.unwrap_or_default().split(':') {
        let d = if d.is_empty() { "." } else { d };
        let candidate = Path::new(d).join(argv0);
        if executable(&candidate).unwrap_or(false) {
            return Ok(candidate);
        }
    }
    Err(format!(
        "exec: {argv0:?}: executable file not found in $PATH"
    ))
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} holds a NUL byte"))
}

/// Sets up and execs; returns only on failure, with the reason.
fn launch_process(l: &Launch, status: &mut File) -> String {
    for r in &l.rlimits {
        if let Err(e) = set_rlimit(r) {
            return format!("setting rlimit {}: {}", r.resource, errno_text(&e));
        }
    }
    let Some(argv0) = l.args.first() else {
        return "the launch message has no command".into();
    };
    // runc makes a missing working directory (as the spec's user, with
    // the rootfs already its root); so does the init.
    if let Err(e) = std::env::set_current_dir(&l.cwd).or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&l.cwd)?;
            std::env::set_current_dir(&l.cwd)
        } else {
            Err(e)
        }
    }) {
        return format!(
            "chdir to cwd ({:?}) set in config.json failed: {}",
            l.cwd,
            errno_text(&e)
        );
    }
    let mut env = l.env.clone();
    // runc set HOME from the user's passwd entry when the spec has none.
    if !env.iter().any(|e| e.starts_with("HOME="))
        && let Ok(home) = std::env::var("HOME")
    {
        env.push(format!("HOME={home}"));
    }
    let path = env.iter().find_map(|e| e.strip_prefix("PATH="));
    let program = match look_path(argv0, path) {
        Ok(p) => p,
        Err(why) => return why,
    };
    let built: Result<(CString, Vec<CString>, Vec<CString>), String> = (|| {
        Ok((
            cstring(&program.to_string_lossy())?,
            l.args
                .iter()
                .map(|a| cstring(a))
                .collect::<Result<_, _>>()?,
            env.iter().map(|e| cstring(e)).collect::<Result<_, _>>()?,
        ))
    })();
    let (program, argv, envp) = match built {
        Ok(b) => b,
        Err(why) => return why,
    };
    let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    let _ = status.write_all(&[EXECUTING]);
    // SAFETY: std ignores SIGPIPE in its runtime; the command starts with
    // the default disposition, as runc leaves it. The pointers are
    // NUL-terminated strings in NULL-terminated arrays that outlive the call.
    let err = unsafe {
        signal(SIGPIPE, SIG_DFL);
        execve(program.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
        std::io::Error::last_os_error()
    };
    format!("exec: {argv0:?}: {}", errno_text(&err))
}
