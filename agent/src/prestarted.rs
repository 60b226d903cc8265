//! The host side of pre-started sandboxes: the init the agent installs in
//! its state dir, each container's directory (bind-mounted read-only at
//! [`fast_sandbox_init::MOUNT_DIR`]: the init, hard-linked, and the launch
//! and status FIFOs), the agent's ends of those FIFOs, and the two facts a
//! restarted agent needs (has the init exec'd yet; the sandbox's hostname).
//!
//! The state dir is a host path at the same path in the agent pod (as for
//! [`crate::logs`]), so runc bind-mounts what the agent wrote.

use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fast_sandbox_init::{EXECUTING, FAILED, INIT, LAUNCH, READY, STATUS};
use rustix::fs::Mode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::error::{Error, Result};
use crate::fifo::mkfifo;

/// The init, built statically by the build script.
pub static INIT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fast-sandbox-init"));
/// File name of the installed init in the agent's state dir.
pub const INSTALLED_INIT: &str = "fast-sandbox-init";

/// The directories of every pre-started container: `<state>/stock/<id>`.
#[derive(Clone, Debug)]
pub struct PrestartDirs {
    root: PathBuf,
    init: PathBuf,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::io(what, e)
}

impl PrestartDirs {
    /// Directories under `state_dir/stock`; installs the init at
    /// `state_dir/fast-sandbox-init` (replaced by rename, so containers
    /// holding the old one keep it).
    pub fn new(state_dir: &Path) -> Result<Self> {
        let root = state_dir.join("stock");
        std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
        // Only root on the host reaches the FIFOs (they belong to the
        // image's user, who may exist on the host too); runc bind-mounts
        // each container's directory, so the container never walks this.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("chmod {}", root.display())))?;
        let init = state_dir.join(INSTALLED_INIT);
        let current = std::fs::read(&init).ok();
        if current.as_deref() != Some(INIT_BINARY) {
            let tmp = state_dir.join(format!(".{INSTALLED_INIT}.{}", std::process::id()));
            std::fs::write(&tmp, INIT_BINARY).map_err(io(format!("writing {}", tmp.display())))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
                .map_err(io(format!("chmod {}", tmp.display())))?;
            std::fs::rename(&tmp, &init).map_err(io(format!("installing {}", init.display())))?;
        }
        Ok(Self { root, init })
    }

    /// The directory of container `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Makes container `id`'s directory: the init and FIFOs the image's
    /// user (`uid`, `gid`) may open.
    pub fn create(&self, id: &str, uid: u32, gid: u32) -> Result<PathBuf> {
        let dir = self.dir(id);
        std::fs::create_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let made = (|| {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io(format!("chmod {}", dir.display())))?;
            let init = dir.join(INIT);
            if std::fs::hard_link(&self.init, &init).is_err() {
                std::fs::copy(&self.init, &init)
                    .map_err(io(format!("copying the init to {}", init.display())))?;
            }
            for name in [LAUNCH, STATUS] {
                let p = dir.join(name);
                mkfifo(&p)?;
                std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                    .map_err(io(format!("chown {}", p.display())))?;
            }
            Ok(())
        })();
        if made.is_err() {
            self.remove(id);
        }
        made.map(|()| dir)
    }

    /// Empties container `id`'s directory once its command runs, so the
    /// sandbox keeps only an empty read-only directory (the mount point).
    pub fn scrub(&self, id: &str) {
        let dir = self.dir(id);
        for name in [LAUNCH, STATUS, INIT] {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }

    /// Removes container `id`'s directory (missing is fine).
    pub fn remove(&self, id: &str) {
        let dir = self.dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %dir.display(), error = %e, "removing a pre-started sandbox's directory failed");
        }
    }

    /// Container ids that have a directory.
    pub fn ids(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether container `id`'s process, host PID `pid` (under the host's
    /// `/proc` at `proc_root`), still is our init: the executable behind
    /// `/proc/<pid>/exe` is the file in its directory. Once the command
    /// runs the directory is scrubbed, or the executable differs.
    pub fn still_init(&self, id: &str, proc_root: &Path, pid: u32) -> bool {
        let Ok(init) = std::fs::metadata(self.dir(id).join(INIT)) else {
            return false;
        };
        std::fs::metadata(proc_root.join(pid.to_string()).join("exe"))
            .is_ok_and(|exe| exe.dev() == init.dev() && exe.ino() == init.ino())
    }
}

/// The agent's ends of one container's FIFOs: status read-only (so the
/// init's exec reads as end-of-file), launch read-write (so opening never
/// waits, and the init never reads end-of-file while the agent lives).
#[derive(Debug)]
pub struct Ends {
    status: pipe::Receiver,
    launch: pipe::Sender,
}

impl Ends {
    /// Opens both ends in `dir`; status first, so an init woken by the
    /// launch end finds a reader for its READY.
    pub fn open(dir: &Path) -> Result<Self> {
        let status = pipe::OpenOptions::new()
            .open_receiver(dir.join(STATUS))
            .map_err(io(format!("opening {}", dir.join(STATUS).display())))?;
        let launch = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(dir.join(LAUNCH))
            .map_err(io(format!("opening {}", dir.join(LAUNCH).display())))?;
        Ok(Self { status, launch })
    }

    /// Waits until the init says it waits for its launch message.
    pub async fn ready(&mut self, timeout: Duration) -> Result<()> {
        let mut b = [0u8; 1];
        match tokio::time::timeout(timeout, self.status.read(&mut b)).await {
            Ok(Ok(1)) if b[0] == READY => Ok(()),
            Ok(Ok(0)) => Err(Error::Prestarted(
                "the init exited before it was ready".into(),
            )),
            Ok(Ok(_)) => Err(Error::Prestarted(format!(
                "the init sent {:?} instead of ready",
                b[0] as char
            ))),
            Ok(Err(e)) => Err(Error::io("reading the init's status", e)),
            Err(_) => Err(Error::Prestarted(format!(
                "the init was not ready within {timeout:?}"
            ))),
        }
    }

    /// Sends the launch message and waits for the outcome: Ok once the
    /// init exec'd the command; [`Error::StartFailed`] with the init's
    /// reason when the command could not be started (missing binary or
    /// working directory), as on the cold path.
    pub async fn launch(mut self, message: &[u8], timeout: Duration) -> Result<()> {
        let run = async {
            self.launch
                .write_all(message)
                .await
                .map_err(|e| Error::io("writing the launch message", e))?;
            let mut out = Vec::new();
            self.status
                .read_to_end(&mut out)
                .await
                .map_err(|e| Error::io("reading the init's status", e))?;
            Ok::<_, Error>(out)
        };
        let out = tokio::time::timeout(timeout, run).await.map_err(|_| {
            Error::Prestarted(format!("the init did not exec within {timeout:?}"))
        })??;
        outcome(&out)
    }
}

/// What the status bytes read to end-of-file after a launch say.
fn outcome(bytes: &[u8]) -> Result<()> {
    // READY again is an init that woke for a new agent's launch end.
    let rest: &[u8] = {
        let start = bytes
            .iter()
            .position(|b| *b != READY)
            .unwrap_or(bytes.len());
        &bytes[start..]
    };
    match rest {
        [EXECUTING] => Ok(()),
        [EXECUTING, FAILED, why @ ..] | [FAILED, why @ ..] => Err(Error::StartFailed(
            String::from_utf8_lossy(why).into_owned(),
        )),
        [] => Err(Error::Prestarted(
            "the init exited without exec'ing the command".into(),
        )),
        other => Err(Error::Prestarted(format!(
            "the init sent an unexpected status {:?}",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// Sets the hostname of the sandbox whose process's `/proc` directory is
/// `proc_dir` (see [`crate::rootfs::process_dir`]), from a short-lived
/// thread that enters its UTS namespace (the init holds no capability to
/// set it, and no thread the agent keeps changes namespace).
pub async fn set_hostname(proc_dir: OwnedFd, name: &str) -> Result<()> {
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let what = "setting the sandbox's hostname";
        std::thread::spawn(move || -> std::io::Result<()> {
            let ns = rustix::fs::openat(
                &proc_dir,
                "ns/uts",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWUTS)?;
            nix::unistd::sethostname(&name)?;
            Ok(())
        })
        .join()
        .map_err(|_| Error::io(what, std::io::Error::other("thread panicked")))?
        .map_err(|e| Error::io(what, e))
    })
    .await
    .map_err(|e| Error::io("setting the hostname", std::io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_tells_exec_failure_and_death_apart() {
        assert!(outcome(b"X").is_ok());
        assert!(outcome(b"RRX").is_ok());
        let e = outcome(b"XEexec: \"nope\": executable file not found in $PATH").unwrap_err();
        assert_eq!(e.code(), fast_sandbox_api::agent::ErrorCode::StartFailed);
        assert!(e.to_string().contains("not found in $PATH"), "{e}");
        assert_eq!(
            outcome(b"Echdir failed").unwrap_err().code(),
            fast_sandbox_api::agent::ErrorCode::StartFailed
        );
        for died in [&b""[..], b"R", b"Z"] {
            assert!(
                matches!(outcome(died), Err(Error::Prestarted(_))),
                "{died:?}"
            );
        }
    }

    #[test]
    fn directories_hold_the_init_and_fifos_and_are_scrubbed() {
        let state = tempfile::tempdir().unwrap();
        let dirs = PrestartDirs::new(state.path()).unwrap();
        // Installing again over an identical init is a no-op.
        PrestartDirs::new(state.path()).unwrap();
        let dir = dirs.create("c1", 0, 0).unwrap();
        let meta = std::fs::metadata(dir.join(INIT)).unwrap();
        assert!(meta.permissions().mode() & 0o111 != 0);
        assert_eq!(meta.len() as usize, INIT_BINARY.len());
        assert_eq!(dirs.ids(), ["c1"]);
        assert!(dirs.create("c1", 0, 0).is_err(), "an id is made once");
        assert!(!dirs.still_init("c1", Path::new("/proc"), std::process::id()));
        dirs.scrub("c1");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        dirs.remove("c1");
        assert!(dirs.ids().is_empty());
    }
}
