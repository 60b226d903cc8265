//! Sandbox stdout and stderr as plain files under the agent's state dir.
//!
//! The runc shim opens the task's stdio paths on the host: a path that is a
//! regular file is opened for appending (a FIFO would need a reader before
//! the task is created). So the agent creates two empty files per container
//! before the task and serves them, following them while the process runs.
//! The state dir must be the same path on the host and in the agent pod.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};

/// How often a follower looks for new bytes while the process runs.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes read per chunk.
const CHUNK: usize = 64 * 1024;

/// Which output of a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl LogStream {
    /// Parses `stdout` or `stderr`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stdout" => Some(Self::Stdout),
            "stderr" => Some(Self::Stderr),
            _ => None,
        }
    }
}

/// The directory holding every container's log files.
#[derive(Clone, Debug)]
pub struct LogDir {
    root: PathBuf,
}

impl LogDir {
    /// Log files live in `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::io(format!("creating log dir {}", root.display()), e))?;
        Ok(Self { root })
    }

    /// The log files under `root`, which may not exist (nothing is created).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The file of one output of a container.
    pub fn path(&self, container_id: &str, stream: LogStream) -> PathBuf {
        let ext = match stream {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        };
        self.root.join(format!("{container_id}.{ext}"))
    }

    /// Creates both (empty) files before the task, so the shim appends to them.
    pub fn create(&self, container_id: &str) -> Result<(PathBuf, PathBuf)> {
        let out = self.path(container_id, LogStream::Stdout);
        let err = self.path(container_id, LogStream::Stderr);
        for p in [&out, &err] {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::io(format!("creating log file {}", p.display()), e))?;
        }
        Ok((out, err))
    }

    /// Removes both files of a container (missing is fine).
    pub fn remove(&self, container_id: &str) {
        for s in [LogStream::Stdout, LogStream::Stderr] {
            let p = self.path(container_id, s);
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %p.display(), error = %e, "removing log file failed");
            }
        }
    }

    /// Container IDs that have log files.
    pub fn container_ids(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return vec![];
        };
        let mut ids: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (id, ext) = name.rsplit_once('.')?;
                (ext == "stdout" || ext == "stderr").then(|| id.to_string())
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// Streams a log file from the start. With `follow`, keeps streaming new
/// bytes until `exited` turns true (or its sender is dropped: the sandbox
/// was deleted), then sends what is left and ends.
pub fn stream(
    path: &Path,
    follow: bool,
    mut exited: watch::Receiver<bool>,
) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(16);
    let path = path.to_path_buf();
    tokio::spawn(async move {
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let mut pos = 0u64;
        let mut buf = vec![0u8; CHUNK];
        let mut last_round = !follow;
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if n > 0 {
                pos += n as u64;
                if tx
                    .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            if last_round {
                return;
            }
            if *exited.borrow() {
                // One more pass picks up what the shim flushed at exit.
                last_round = true;
                continue;
            }
            tokio::select! {
                changed = exited.changed() => {
                    if changed.is_err() {
                        last_round = true;
                    }
                }
                () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                () = tx.closed() => return,
            }
            // Re-seek so a truncated or re-created file does not wedge the reader.
            if file.seek(SeekFrom::Start(pos)).await.is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    async fn collect(mut rx: mpsc::Receiver<std::io::Result<Bytes>>) -> String {
        let mut s = String::new();
        while let Some(chunk) = rx.recv().await {
            s.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
        s
    }

    #[tokio::test]
    async fn follow_ends_when_the_process_exits() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogDir::new(dir.path()).unwrap();
        let (out, _) = logs.create("c1").unwrap();
        let (tx, rx) = watch::channel(false);
        let reader = stream(&out, true, rx);
        let mut f = std::fs::OpenOptions::new().append(true).open(&out).unwrap();
        f.write_all(b"one\n").unwrap();
        let collector = tokio::spawn(collect(reader));
        f.write_all(b"two\n").unwrap();
        tx.send_replace(true);
        assert_eq!(collector.await.unwrap(), "one\ntwo\n");
        assert_eq!(logs.container_ids(), ["c1"]);
        logs.remove("c1");
        assert!(logs.container_ids().is_empty());
    }

    #[tokio::test]
    async fn without_follow_the_current_content_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogDir::new(dir.path()).unwrap();
        let (out, _) = logs.create("c1").unwrap();
        std::fs::write(&out, "hello").unwrap();
        let (_tx, rx) = watch::channel(false);
        assert_eq!(collect(stream(&out, false, rx)).await, "hello");
    }
}
