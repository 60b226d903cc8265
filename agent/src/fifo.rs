//! The stdio FIFOs of exec'd processes, one directory per exec under the
//! agent's state dir: `exec/<container id>/<exec id>/{stdin,stdout,stderr}`.
//!
//! The shim opens stdio paths on the host, so the state dir must be the same
//! path on the host and in the agent pod (as for [`crate::logs`]). A FIFO
//! needs its reader before the shim opens it for writing (at the exec's
//! start), so the agent opens its ends first: output FIFOs read-only and
//! non-blocking, the stdin FIFO read-write (which never blocks on Linux and
//! needs no reader yet). The shim keeps ends of its own: a process never
//! gets `EPIPE` when the agent goes away, its writes block once the pipe is
//! full, and stdin reaches end-of-file only after both the agent's end is
//! closed and containerd's `CloseIO`.
//!
//! The directories are also the record of execs in flight: a restarted
//! agent finds what a previous one left and finishes it (see
//! [`crate::exec`]).

use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, mknodat};
use tokio::net::unix::pipe;

use crate::error::{Error, Result};

/// The directory of every exec's FIFOs.
#[derive(Clone, Debug)]
pub struct FifoDir {
    root: PathBuf,
}

/// The FIFOs of one exec.
#[derive(Debug)]
pub struct Fifos {
    /// The exec's directory.
    pub dir: PathBuf,
    /// Standard input, when the exec has one.
    pub stdin: Option<PathBuf>,
    /// Standard output (or the terminal).
    pub stdout: PathBuf,
    /// Standard error, unless the exec runs on a terminal.
    pub stderr: Option<PathBuf>,
}

/// An exec a previous agent process left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    /// Container of the sandbox.
    pub container_id: String,
    /// Exec id.
    pub exec_id: String,
}

/// Makes a FIFO only its owner may open.
pub(crate) fn mkfifo(path: &Path) -> Result<()> {
    mknodat(
        rustix::fs::CWD,
        path,
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .map_err(|e| Error::io(format!("creating FIFO {}", path.display()), e.into()))
}

impl FifoDir {
    /// FIFOs live under `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::io(format!("creating exec dir {}", root.display()), e))?;
        Ok(Self { root })
    }

    fn exec_dir(&self, container_id: &str, exec_id: &str) -> PathBuf {
        self.root.join(container_id).join(exec_id)
    }

    /// Creates the FIFOs of one exec: stdout always, stdin when asked,
    /// stderr unless it runs on a terminal.
    pub fn create(
        &self,
        container_id: &str,
        exec_id: &str,
        stdin: bool,
        tty: bool,
    ) -> Result<Fifos> {
        let dir = self.exec_dir(container_id, exec_id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating exec dir {}", dir.display()), e))?;
        let fifos = Fifos {
            stdin: stdin.then(|| dir.join("stdin")),
            stdout: dir.join("stdout"),
            stderr: (!tty).then(|| dir.join("stderr")),
            dir,
        };
        let made = [
            Some(&fifos.stdout),
            fifos.stdin.as_ref(),
            fifos.stderr.as_ref(),
        ]
        .into_iter()
        .flatten()
        .try_for_each(|p| mkfifo(p));
        if let Err(e) = made {
            self.remove(container_id, exec_id);
            return Err(e);
        }
        Ok(fifos)
    }

    /// Removes one exec's FIFOs (missing is fine), and its container's
    /// directory once empty.
    pub fn remove(&self, container_id: &str, exec_id: &str) {
        let dir = self.exec_dir(container_id, exec_id);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %dir.display(), error = %e, "removing exec FIFOs failed");
        }
        // Fails while other execs of the container run: fine.
        let _ = std::fs::remove_dir(self.root.join(container_id));
    }

    /// Removes everything of a container (it is gone).
    pub fn remove_container(&self, container_id: &str) {
        let _ = std::fs::remove_dir_all(self.root.join(container_id));
    }

    /// The execs whose FIFOs exist, by container.
    pub fn leftovers(&self) -> Vec<Leftover> {
        let names = |p: &Path| -> Vec<String> {
            let Ok(dir) = std::fs::read_dir(p) else {
                return vec![];
            };
            let mut v: Vec<String> = dir
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            v.sort();
            v
        };
        let mut out = Vec::new();
        for container_id in names(&self.root) {
            for exec_id in names(&self.root.join(&container_id)) {
                out.push(Leftover {
                    container_id: container_id.clone(),
                    exec_id,
                });
            }
        }
        out
    }

    /// The output FIFOs of a leftover exec that exist.
    pub fn outputs(&self, container_id: &str, exec_id: &str) -> Vec<PathBuf> {
        let dir = self.exec_dir(container_id, exec_id);
        ["stdout", "stderr"]
            .into_iter()
            .map(|n| dir.join(n))
            .filter(|p| p.exists())
            .collect()
    }
}

/// Opens the agent's (reading) end of an output FIFO; never blocks.
pub fn open_output(path: &Path) -> Result<pipe::Receiver> {
    pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|e| Error::io(format!("opening FIFO {}", path.display()), e))
}

/// Opens the agent's (writing) end of the stdin FIFO read-write, so it
/// needs no reader yet and never blocks.
pub fn open_input(path: &Path) -> Result<pipe::Sender> {
    pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|e| Error::io(format!("opening FIFO {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn fifos_are_created_found_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let fifos = FifoDir::new(dir.path().join("exec")).unwrap();
        let f = fifos.create("c1", "e-1", true, false).unwrap();
        assert!(f.stdin.is_some() && f.stderr.is_some());
        let t = fifos.create("c1", "d-2", false, true).unwrap();
        assert!(t.stdin.is_none() && t.stderr.is_none());
        assert_eq!(
            fifos.leftovers(),
            [
                Leftover {
                    container_id: "c1".into(),
                    exec_id: "d-2".into()
                },
                Leftover {
                    container_id: "c1".into(),
                    exec_id: "e-1".into()
                }
            ]
        );
        assert_eq!(fifos.outputs("c1", "d-2"), std::slice::from_ref(&t.stdout));

        // The agent's ends open without a peer; data flows once one writes.
        let mut out = open_output(&f.stdout).unwrap();
        let mut input = open_input(f.stdin.as_ref().unwrap()).unwrap();
        input.write_all(b"in").await.unwrap();
        let mut w = pipe::OpenOptions::new().open_sender(&f.stdout).unwrap();
        w.write_all(b"out").await.unwrap();
        drop(w);
        let mut got = Vec::new();
        out.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"out");

        fifos.remove("c1", "e-1");
        fifos.remove("c1", "d-2");
        assert!(fifos.leftovers().is_empty());
        assert!(!dir.path().join("exec/c1").exists());
    }
}
