//! Sandbox stdout and stderr as plain files under the agent's state dir.
//!
//! The runc shim opens the task's stdio paths on the host: a path that is a
//! regular file is opened for appending (a FIFO would need a reader before
//! the task is created). So the agent creates two empty files per container
//! before the task and serves them, following them while the process runs.
//! The state dir must be the same path on the host and in the agent pod.
//!
//! Each file is capped: once a second, a file past the cap loses its oldest
//! bytes in place (`FALLOC_FL_COLLAPSE_RANGE`, so the shim keeps appending
//! to the same file), keeping about the newest half. On a filesystem that
//! cannot collapse a range the file starts over. A sandbox printing without
//! end cannot fill the node's disk.

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
/// Bytes one output of a sandbox may hold by default (`--log-max-bytes`).
pub const DEFAULT_LOG_MAX_BYTES: u64 = 16 << 20;
/// The smallest cap: what is dropped is a multiple of this, which every
/// filesystem's block size divides.
pub const LOG_CAP_UNIT: u64 = 64 << 10;
/// How often files are measured against the cap.
const CAP_INTERVAL: Duration = Duration::from_secs(1);

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

    /// Drops the oldest bytes of every file past `max`, keeping about the
    /// newest half; returns how many bytes went.
    pub fn cap(&self, max: u64) -> u64 {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let mut dropped = 0;
        for entry in dir.filter_map(|e| e.ok()) {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() || meta.len() <= max {
                continue;
            }
            let path = entry.path();
            match shrink(&path, meta.len(), max / 2) {
                Ok(n) => dropped += n,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "capping a log file failed")
                }
            }
        }
        dropped
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

/// Removes the oldest `len - keep` bytes of the file at `path` (rounded down
/// to [`LOG_CAP_UNIT`]), or empties it where the filesystem cannot.
fn shrink(path: &Path, len: u64, keep: u64) -> std::io::Result<u64> {
    use rustix::fs::{FallocateFlags, fallocate};
    use rustix::io::Errno;
    let drop = (len.saturating_sub(keep) / LOG_CAP_UNIT) * LOG_CAP_UNIT;
    if drop == 0 || drop >= len {
        return Ok(0);
    }
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    match fallocate(&file, FallocateFlags::COLLAPSE_RANGE, 0, drop) {
        Ok(()) => Ok(drop),
        Err(Errno::OPNOTSUPP | Errno::INVAL) => {
            file.set_len(0)?;
            Ok(len)
        }
        Err(e) => Err(e.into()),
    }
}

/// Keeps every file of `dir` within `max` bytes (0: no cap) until
/// `shutdown`; `dropped` hears how many bytes each pass removed.
pub async fn keep_capped(
    dir: LogDir,
    max: u64,
    dropped: impl Fn(u64) + Send + 'static,
    mut shutdown: watch::Receiver<bool>,
) {
    if max == 0 {
        return;
    }
    loop {
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || d.cap(max)).await {
            Ok(0) | Err(_) => {}
            Ok(n) => dropped(n),
        }
        tokio::select! {
            () = tokio::time::sleep(CAP_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
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
            // A capped file shrank: go on from its end (the reader was
            // following, so little is skipped). Re-seek so a truncated or
            // re-created file does not wedge the reader.
            if let Ok(m) = file.metadata().await
                && m.len() < pos
            {
                pos = m.len();
            }
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

    #[test]
    fn a_file_past_the_cap_keeps_its_newest_half_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogDir::new(dir.path()).unwrap();
        let (out, err) = logs.create("c1").unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&out).unwrap();
        let line = |i: u32| format!("{i:09}\n");
        for i in 0..100_000 {
            f.write_all(line(i).as_bytes()).unwrap();
        }
        std::fs::write(&err, "small").unwrap();
        let max = 256 << 10;
        let dropped = logs.cap(max);
        let len = std::fs::metadata(&out).unwrap().len();
        f.write_all(b"after\n").unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        if len == 0 {
            // A filesystem that cannot collapse a range (tmpfs): emptied.
            assert_eq!(dropped, 1_000_000);
            assert_eq!(text, "after\n");
        } else {
            assert!(len <= max && len >= max / 2, "{len}");
            assert_eq!(dropped + len, 1_000_000);
            // The newest bytes are kept, and the shim's next append lands
            // at the new end.
            let tail = format!("{}after\n", line(99_999));
            assert!(text.ends_with(&tail), "{}", &text[text.len() - 40..]);
        }
        assert_eq!(std::fs::read_to_string(&err).unwrap(), "small");
        assert_eq!(logs.cap(max), 0, "within the cap now");
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
