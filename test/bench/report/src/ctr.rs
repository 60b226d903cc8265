//! The naive floor: `ctr run -d` on the same containerd, timed from the
//! command's start to its exit (the task is running then).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why a `ctr` call failed.
#[derive(Debug, thiserror::Error)]
pub enum CtrError {
    /// `ctr` could not be run.
    #[error("running ctr: {0}")]
    Spawn(#[from] std::io::Error),
    /// `ctr` exited non-zero.
    #[error("ctr {0}: {1}")]
    Failed(String, String),
}

/// Where and what `ctr run -d` starts.
#[derive(Clone, Debug)]
pub struct Ctr {
    /// containerd socket.
    pub socket: PathBuf,
    /// containerd namespace.
    pub namespace: String,
    /// Image (already present).
    pub image: String,
}

impl Ctr {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(&self.socket)
            .args(["-n", &self.namespace])
            .args(args);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    }

    fn run(&self, args: &[&str]) -> Result<(), CtrError> {
        let out = self.command(args).output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(CtrError::Failed(
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    }

    /// Times one `ctr run -d <image> <id> sleep 300`, then removes it.
    pub fn once(&self, id: &str) -> Result<Duration, CtrError> {
        let elapsed = self.start(id)?;
        self.remove(id)?;
        Ok(elapsed)
    }

    /// Times one `ctr run -d <image> <id> sleep 300` and leaves it running.
    pub fn start(&self, id: &str) -> Result<Duration, CtrError> {
        let t = Instant::now();
        self.run(&["run", "-d", &self.image, id, "sleep", "300"])?;
        Ok(t.elapsed())
    }

    /// Kills and removes what [`Ctr::start`] started.
    pub fn remove(&self, id: &str) -> Result<(), CtrError> {
        let _ = self.run(&["tasks", "kill", "-s", "SIGKILL", id]);
        // `tasks rm` fails until the killed task has exited.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.run(&["tasks", "rm", id]).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.run(&["containers", "rm", id])
    }

    /// A burst: `runs` starts by `concurrency` workers, nothing removed
    /// until all run. Returns each start's latency and the time until the
    /// last one ran.
    pub fn burst(
        &self,
        runs: usize,
        concurrency: usize,
    ) -> Result<(Vec<Duration>, Duration), CtrError> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let ids: Vec<String> = (0..runs)
            .map(|i| format!("bench-ctr-burst-{}-{i}", std::process::id()))
            .collect();
        let t = Instant::now();
        let results: Vec<Result<Vec<Duration>, CtrError>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..concurrency.max(1))
                .map(|_| {
                    s.spawn(|| {
                        let mut samples = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let Some(id) = ids.get(i) else {
                                return Ok(samples);
                            };
                            samples.push(self.start(id)?);
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| Ok(Vec::new())))
                .collect()
        });
        let makespan = t.elapsed();
        for id in &ids {
            let _ = self.remove(id);
        }
        let mut all = Vec::new();
        for r in results {
            all.extend(r?);
        }
        Ok((all, makespan))
    }

    /// `runs` timed runs (after `warmup` untimed ones per worker) with
    /// `concurrency` workers, each on its own thread.
    pub fn series(
        &self,
        runs: usize,
        warmup: usize,
        concurrency: usize,
    ) -> Result<Vec<Duration>, CtrError> {
        let per_worker = runs.div_ceil(concurrency.max(1));
        let results: Vec<Result<Vec<Duration>, CtrError>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..concurrency.max(1))
                .map(|w| {
                    s.spawn(move || {
                        let mut samples = Vec::new();
                        for i in 0..warmup + per_worker {
                            let id =
                                format!("bench-ctr-{}-c{concurrency}-w{w}-{i}", std::process::id());
                            let d = self.once(&id)?;
                            if i >= warmup {
                                samples.push(d);
                            }
                        }
                        Ok(samples)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| Ok(Vec::new())))
                .collect()
        });
        let mut all = Vec::new();
        for r in results {
            all.extend(r?);
        }
        all.truncate(runs);
        Ok(all)
    }
}

impl Ctr {
    /// Times one `ctr task exec --exec-id <id> <container> /bin/true`
    /// (from the command's start to its exit, the exec'd process reaped).
    pub fn exec_once(&self, container: &str, exec_id: &str) -> Result<Duration, CtrError> {
        let t = Instant::now();
        self.run(&["task", "exec", "--exec-id", exec_id, container, "/bin/true"])?;
        Ok(t.elapsed())
    }

    /// `runs` timed `ctr task exec`s of `/bin/true` in `container` (after
    /// `warmup` untimed ones per worker) with `concurrency` workers.
    pub fn exec_series(
        &self,
        container: &str,
        runs: usize,
        warmup: usize,
        concurrency: usize,
    ) -> Result<Vec<Duration>, CtrError> {
        let per_worker = runs.div_ceil(concurrency.max(1));
        let results: Vec<Result<Vec<Duration>, CtrError>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..concurrency.max(1))
                .map(|w| {
                    s.spawn(move || {
                        let mut samples = Vec::new();
                        for i in 0..warmup + per_worker {
                            let id =
                                format!("bench-{}-c{concurrency}-w{w}-{i}", std::process::id());
                            let d = self.exec_once(container, &id)?;
                            if i >= warmup {
                                samples.push(d);
                            }
                        }
                        Ok(samples)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| Ok(Vec::new())))
                .collect()
        });
        let mut all = Vec::new();
        for r in results {
            all.extend(r?);
        }
        all.truncate(runs);
        Ok(all)
    }
}

/// Whether `socket` looks like a containerd socket we can use.
pub fn available(socket: &Path) -> bool {
    socket.exists()
        && Command::new("ctr")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}
