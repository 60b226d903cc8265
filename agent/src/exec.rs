//! Commands exec'd into running sandboxes through containerd's task exec:
//! the process joins the sandbox's namespaces and cgroup (so it counts
//! against its pids and memory limits) and gets the sandbox process's
//! user, capabilities, no-new-privileges and rlimits, and the container's
//! seccomp profile (see [`crate::spec::exec_process`]).
//!
//! Each exec is one task of the agent that owns its FIFOs ([`crate::fifo`]):
//! two output pumps read at most one frame at a time and wait until the
//! client's stream took it (so a slow client slows the process down instead
//! of growing the agent's memory), an input feeder writes stdin, resizes the
//! terminal and closes stdin, and the task waits for the exit, the timeout
//! or the client going away (which kills the process unless it detached).
//! After the exit the pumps drain what the shim still flushes, then the
//! status frame goes out and the process and its FIFOs are deleted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fast_sandbox_api::exec::{
    Channel, ExecRequest, ExecStatus, MAX_FRAME_PAYLOAD, TerminalSize, encode, encode_json,
};
use fast_sandbox_api::validation::validate_exec_request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};

use crate::agent::Agent;
use crate::error::{Error, Result};
use crate::fifo::{self, FifoDir};
use crate::metrics::Metrics;
use crate::runtime::{Containerd, ExecStdio};

mod leftovers;
mod quota;
mod sessions;
mod status;
mod tree;

pub use leftovers::finish_leftovers;
pub use quota::MAX_EXECS_PER_SANDBOX;
use quota::{ExecQuota, ExecSlot};
pub use sessions::ExecSessions;
use sessions::Session;
use status::{Kill, exec_status, start_failure};

/// Output frames queued between the pumps and the client's stream: with
/// [`MAX_FRAME_PAYLOAD`] each, what one exec holds beyond HTTP/2's window.
const OUTPUT_QUEUE: usize = 4;
/// Input messages queued between the client's stream and the feeder.
const INPUT_QUEUE: usize = 4;
/// After the exit, an output FIFO that stays silent this long is given up:
/// a background process the command started still holds it open.
const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// SIGKILL is followed by at most this long a wait for the exit.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(10);
/// Exec ids of detached execs start with this, so a restarted agent knows
/// which leftovers must keep running.
pub(crate) const DETACHED_PREFIX: &str = "d-";

/// Input from the client to a running exec.
#[derive(Debug)]
pub enum Input {
    /// Bytes for stdin.
    Stdin(Bytes),
    /// End of stdin.
    CloseStdin,
    /// New terminal size.
    Resize(TerminalSize),
    /// The client went away abnormally (its request stream broke).
    Disconnected,
}

/// A started exec: send it input, read its output frames (ending with the
/// status frame). Dropping `output` counts as the client going away.
#[derive(Debug)]
pub struct Process {
    /// Input to the process.
    pub input: mpsc::Sender<Input>,
    /// Encoded frames: stdout, stderr, then one status frame.
    pub output: mpsc::Receiver<Bytes>,
}

impl Process {
    /// An exec that is over already: `stderr`, then `status`.
    fn finished(stderr: &str, status: &ExecStatus) -> Self {
        let (input, _) = mpsc::channel(1);
        let (tx, output) = mpsc::channel(2);
        if !stderr.is_empty() {
            let _ = tx.try_send(encode(Channel::Stderr, stderr.as_bytes()).unwrap_or_default());
        }
        let _ = tx.try_send(encode_json(Channel::Status, status).unwrap_or_default());
        Self { input, output }
    }
}

/// The agent's execs: where their FIFOs go, how they are named and how
/// many each sandbox runs.
#[derive(Debug)]
pub struct Execs {
    fifos: FifoDir,
    epoch: String,
    seq: AtomicU64,
    quota: ExecQuota,
    sessions: ExecSessions,
}

impl Execs {
    /// Execs whose FIFOs live under `dir`.
    pub fn new(dir: impl Into<std::path::PathBuf>) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Ok(Self {
            fifos: FifoDir::new(dir)?,
            epoch: format!("{nanos:x}"),
            seq: AtomicU64::new(0),
            quota: ExecQuota::default(),
            sessions: ExecSessions::default(),
        })
    }

    /// The FIFO directory.
    pub fn fifos(&self) -> &FifoDir {
        &self.fifos
    }

    /// The execs their clients named.
    pub fn sessions(&self) -> &ExecSessions {
        &self.sessions
    }

    /// A new exec id: unique across agent restarts, marking detached execs.
    fn next_id(&self, detach: bool) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let kind = if detach { "d" } else { "e" };
        format!("{kind}-{}-{n}", self.epoch)
    }

    /// Whether exec `exec_id` belongs to this agent process.
    pub(crate) fn is_own(&self, exec_id: &str) -> bool {
        exec_id
            .split('-')
            .nth(1)
            .is_some_and(|epoch| epoch == self.epoch)
    }
}

/// A container and exec id.
#[derive(Clone, Debug)]
pub(crate) struct Ids {
    pub(crate) container_id: String,
    pub(crate) exec_id: String,
}

/// Starts `req` in sandbox `uid`. Errors before the process runs are
/// errors; a command that cannot be started (not found, not executable)
/// is an exec that is over, with exit code 127 or 126, as a shell reports it.
///
/// The start runs in a task of its own: a caller that goes away meanwhile
/// (its request future dropped) cannot leave a started process without the
/// task that owns it; the [`Process`] it drops then counts as a disconnect.
pub async fn start(agent: &Arc<Agent>, uid: &str, req: ExecRequest) -> Result<Process> {
    let (agent, uid) = (agent.clone(), uid.to_string());
    tokio::spawn(async move { start_owned(&agent, &uid, req).await })
        .await
        .map_err(|e| Error::io("starting an exec", std::io::Error::other(e)))?
}

async fn start_owned(agent: &Arc<Agent>, uid: &str, req: ExecRequest) -> Result<Process> {
    validate_exec_request(&req).map_err(Error::Invalid)?;
    let started = Instant::now();
    let target = agent.running(uid)?;
    let execs = agent.execs();
    let slot = execs.quota.admit(uid)?;
    // A detached exec outlives its client by design: nothing ends it by
    // name, so it takes none.
    let session = req
        .session
        .as_deref()
        .filter(|_| !req.detach)
        .map(|s| execs.sessions.open(uid, s))
        .transpose()?;
    let cd = agent.containerd().clone();
    let spec = cd
        .container_spec(&target.container_id)
        .await?
        .ok_or_else(|| Error::NotFound(uid.to_string()))?;
    let process = crate::spec::exec_process(&spec, &req)?;
    let ids = Ids {
        container_id: target.container_id.clone(),
        exec_id: execs.next_id(req.detach),
    };
    let fifos = execs
        .fifos()
        .create(&ids.container_id, &ids.exec_id, req.stdin, req.tty)?;
    let opened = (|| -> Result<_> {
        let stdout = fifo::open_output(&fifos.stdout)?;
        let stderr = fifos.stderr.as_deref().map(fifo::open_output).transpose()?;
        let stdin = fifos.stdin.as_deref().map(fifo::open_input).transpose()?;
        Ok((stdout, stderr, stdin))
    })();
    let (stdout, stderr, stdin) = match opened {
        Ok(o) => o,
        Err(e) => {
            execs.fifos().remove(&ids.container_id, &ids.exec_id);
            return Err(e);
        }
    };
    let stdio = ExecStdio {
        stdin: fifos.stdin.as_deref(),
        stdout: Some(&fifos.stdout),
        stderr: fifos.stderr.as_deref(),
    };
    if let Err(e) = cd
        .exec(&ids.container_id, &ids.exec_id, process, req.tty, &stdio)
        .await
    {
        execs.fifos().remove(&ids.container_id, &ids.exec_id);
        return Err(not_running_or(agent, uid, e));
    }
    let wait = {
        let (cd, ids) = (cd.clone(), ids.clone());
        tokio::spawn(async move { cd.wait_exec(&ids.container_id, &ids.exec_id).await })
    };
    let pid = match cd.start_exec(&ids.container_id, &ids.exec_id).await {
        Ok(pid) => pid,
        Err(e) => {
            wait.abort();
            finish_in_background(cd, agent.clone(), ids);
            if let Some((stderr, status)) = start_failure(&e, &req.command[0]) {
                tracing::debug!(%uid, error = %e, "exec could not start its command");
                agent.metrics().exec_finished(&status.reason);
                return Ok(Process::finished(&stderr, &status));
            }
            return Err(not_running_or(agent, uid, e));
        }
    };
    agent.metrics().exec_started(started.elapsed());
    if let Some(size) = req.terminal_size.filter(|_| req.tty)
        && let Err(e) = cd
            .resize_exec(&ids.container_id, &ids.exec_id, size.width, size.height)
            .await
    {
        tracing::debug!(%uid, error = %e, "initial terminal size not set");
    }
    let (input, input_rx) = mpsc::channel(INPUT_QUEUE);
    let (output_tx, output) = mpsc::channel(OUTPUT_QUEUE);
    let running = Running {
        agent: agent.clone(),
        cd,
        ids,
        detach: req.detach,
        timeout: req.timeout_seconds.map(Duration::from_secs),
        stdout,
        stderr,
        stdin,
        wait,
        input: input_rx,
        output: output_tx,
        session,
        pid,
        cgroup_suffix: format!("/{}", target.cgroup_leaf),
        _slot: slot,
    };
    tokio::spawn(running.run());
    Ok(Process { input, output })
}

/// A failed exec or start while the sandbox stopped meanwhile is
/// [`Error::SandboxNotRunning`]; anything else is kept.
fn not_running_or(agent: &Agent, uid: &str, e: Error) -> Error {
    match agent.running(uid) {
        Ok(_) => e,
        Err(not_running) => not_running,
    }
}

/// Deletes an exec process and its FIFOs, off the caller's path.
pub(crate) fn finish_in_background(cd: Containerd, agent: Arc<Agent>, ids: Ids) {
    tokio::spawn(async move {
        if let Err(e) = cd.delete_exec(&ids.container_id, &ids.exec_id).await {
            tracing::debug!(container = %ids.container_id, exec = %ids.exec_id, error = %e, "deleting the exec process failed");
        }
        agent
            .execs()
            .fifos()
            .remove(&ids.container_id, &ids.exec_id);
    });
}

/// Everything a running exec owns.
struct Running {
    agent: Arc<Agent>,
    cd: Containerd,
    ids: Ids,
    detach: bool,
    timeout: Option<Duration>,
    stdout: pipe::Receiver,
    stderr: Option<pipe::Receiver>,
    stdin: Option<pipe::Sender>,
    wait: tokio::task::JoinHandle<Result<u32>>,
    input: mpsc::Receiver<Input>,
    output: mpsc::Sender<Bytes>,
    /// Its name, when its client gave one.
    session: Option<Session>,
    /// Its process's host PID.
    pid: u32,
    /// How the sandbox's cgroup path ends, to tell its processes.
    cgroup_suffix: String,
    /// Its place in the sandbox's quota, held until it ends.
    _slot: ExecSlot,
}

impl Running {
    async fn run(self) {
        let Running {
            agent,
            cd,
            ids,
            detach,
            timeout,
            stdout,
            stderr,
            stdin,
            mut wait,
            input,
            output,
            mut session,
            pid,
            cgroup_suffix,
            _slot,
        } = self;
        let metrics = agent.metrics().clone();
        let (exited_tx, exited) = watch::channel(false);
        let (gone_tx, mut gone) = watch::channel(false);
        let mut pumps = vec![tokio::spawn(pump(
            stdout,
            Channel::Stdout,
            output.clone(),
            exited.clone(),
            detach,
            metrics.clone(),
        ))];
        if let Some(stderr) = stderr {
            pumps.push(tokio::spawn(pump(
                stderr,
                Channel::Stderr,
                output.clone(),
                exited.clone(),
                detach,
                metrics.clone(),
            )));
        }
        let feeder = tokio::spawn(feed(
            input,
            stdin,
            cd.clone(),
            ids.clone(),
            gone_tx,
            metrics.clone(),
        ));
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut killed = None;
        let mut kill_deadline = None;
        let exit = loop {
            tokio::select! {
                r = &mut wait => {
                    break r.unwrap_or_else(|e| Err(Error::io("waiting for the exec", std::io::Error::other(e))));
                }
                () = sleep_until(deadline), if killed.is_none() => {
                    killed = timeout.map(Kill::Timeout);
                }
                () = client_gone(&output, &mut gone), if killed.is_none() && !detach => {
                    killed = Some(Kill::Disconnected);
                }
                () = session_ended(&mut session), if killed.is_none() && !detach => {
                    killed = Some(Kill::Disconnected);
                }
                () = sleep_until(kill_deadline) => {
                    wait.abort();
                    break Err(Error::containerd(
                        "wait exec process",
                        tonic::Status::deadline_exceeded(format!("the process did not exit {KILL_WAIT:?} after SIGKILL")),
                    ));
                }
            }
            if killed.is_some() && kill_deadline.is_none() {
                kill_deadline = Some(tokio::time::Instant::now() + KILL_WAIT);
                let (proc_root, suffix) = (agent.config().proc_root.clone(), cgroup_suffix.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    tree::kill_descendants(&proc_root, pid, &suffix);
                })
                .await;
                if let Err(e) = cd
                    .kill_exec(&ids.container_id, &ids.exec_id, libc::SIGKILL)
                    .await
                {
                    tracing::warn!(container = %ids.container_id, exec = %ids.exec_id, error = %e, "killing an exec failed");
                }
            }
        };
        // Over: an end asked from now on finds nothing to end.
        drop(session);
        exited_tx.send_replace(true);
        // A client that is gone reads nothing more: its stream may be
        // stalled, and output waiting for it would hold this exec for good.
        let lost = matches!(killed, Some(Kill::Disconnected));
        for p in pumps {
            if lost {
                p.abort();
            }
            let _ = p.await;
        }
        let status = exec_status(exit, killed);
        metrics.exec_finished(&status.reason);
        tracing::debug!(container = %ids.container_id, exec = %ids.exec_id, ?status, "exec ended");
        if !lost && let Ok(frame) = encode_json(Channel::Status, &status) {
            let _ = output.send(frame).await;
        }
        drop(output);
        feeder.abort();
        finish_in_background(cd, agent, ids);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the exec's session is ended by name (never without one).
async fn session_ended(session: &mut Option<Session>) {
    match session {
        Some(s) => s.ended().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the client is gone: its response stream was dropped, or
/// its request stream broke.
async fn client_gone(output: &mpsc::Sender<Bytes>, gone: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = output.closed() => {}
        broken = async { gone.wait_for(|g| *g).await.is_err() } => {
            if broken {
                // The feeder ended without a disconnect: only the output tells.
                output.closed().await;
            }
        }
    }
}

/// Copies one output FIFO into frames on `output`, one frame in flight at
/// a time. Once the process exited, a FIFO silent for [`DRAIN_IDLE`] ends
/// the copy. Without a client (detached) the bytes are read and dropped.
async fn pump(
    mut fifo: pipe::Receiver,
    channel: Channel,
    output: mpsc::Sender<Bytes>,
    mut exited: watch::Receiver<bool>,
    detach: bool,
    metrics: Metrics,
) {
    let name = match channel {
        Channel::Stderr => "stderr",
        _ => "stdout",
    };
    let mut buf = vec![0u8; MAX_FRAME_PAYLOAD];
    let mut discard = false;
    let mut process_exited = false;
    loop {
        let read = if process_exited {
            match tokio::time::timeout(DRAIN_IDLE, fifo.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                r = fifo.read(&mut buf) => r,
                _ = exited.wait_for(|e| *e) => {
                    process_exited = true;
                    continue;
                }
            }
        };
        let n = match read {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "reading exec output failed");
                return;
            }
        };
        metrics.exec_bytes(name, n);
        if discard {
            continue;
        }
        let Ok(frame) = encode(channel, &buf[..n]) else {
            return;
        };
        if output.send(frame).await.is_err() {
            if detach {
                discard = true;
            } else {
                return;
            }
        }
    }
}

/// Applies the client's input until the client or the exec is done.
async fn feed(
    mut input: mpsc::Receiver<Input>,
    mut stdin: Option<pipe::Sender>,
    cd: Containerd,
    ids: Ids,
    gone: watch::Sender<bool>,
    metrics: Metrics,
) {
    while let Some(msg) = input.recv().await {
        match msg {
            Input::Stdin(bytes) => {
                if let Some(w) = stdin.as_mut() {
                    metrics.exec_bytes("stdin", bytes.len());
                    if let Err(e) = w.write_all(&bytes).await {
                        tracing::debug!(error = %e, "writing exec stdin failed");
                        stdin = None;
                    }
                }
            }
            Input::CloseStdin => {
                if stdin.take().is_some()
                    && let Err(e) = cd.close_exec_stdin(&ids.container_id, &ids.exec_id).await
                {
                    tracing::debug!(error = %e, "closing exec stdin failed");
                }
            }
            Input::Resize(size) => {
                if let Err(e) = cd
                    .resize_exec(&ids.container_id, &ids.exec_id, size.width, size.height)
                    .await
                {
                    tracing::debug!(error = %e, "resizing the exec terminal failed");
                }
            }
            Input::Disconnected => {
                gone.send_replace(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_ids_mark_detached_execs_and_their_agent() {
        let dir = tempfile::tempdir().unwrap();
        let a = Execs::new(dir.path().join("a")).unwrap();
        let attached = a.next_id(false);
        let detached = a.next_id(true);
        assert!(attached.starts_with("e-"));
        assert!(detached.starts_with(DETACHED_PREFIX));
        assert_ne!(attached, detached);
        assert!(a.is_own(&attached) && a.is_own(&detached));
        assert!(!a.is_own("e-1-0"));
        // containerd ids: letters, digits and single separators.
        assert!(
            attached
                .split('-')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()))
        );
    }
}
