//! containerd calls of the processes exec'd into a sandbox's task: each is
//! named by the container and an exec id, runs in the task's namespaces and
//! cgroup, and has stdio on FIFOs the shim opens on the host.

use std::path::Path;

use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, KillRequest, ResizePtyRequest,
    StartRequest, WaitRequest,
};

use super::Containerd;
use crate::error::{Error, Result};

/// Type URL of an OCI runtime spec `process` held as JSON (what `ctr task
/// exec` sends; the runc shim reads the JSON whatever the URL).
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// Host paths of an exec'd process's stdio FIFOs; `None` leaves the stream
/// unconnected (stdin reads end-of-file, output is dropped).
#[derive(Clone, Debug, Default)]
pub struct ExecStdio<'a> {
    /// Standard input.
    pub stdin: Option<&'a Path>,
    /// Standard output (the terminal's output with a terminal).
    pub stdout: Option<&'a Path>,
    /// Standard error (never with a terminal).
    pub stderr: Option<&'a Path>,
}

fn path(p: Option<&Path>) -> String {
    p.map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Containerd {
    /// The OCI runtime spec of container `id` as JSON, `None` when there is
    /// no such container.
    pub async fn container_spec(&self, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .container(id)
            .await?
            .and_then(|c| c.spec)
            .map(|s| s.value))
    }

    /// Adds process `exec_id` (not started) to container `id`'s task, with
    /// `process_json` (an OCI `process`) as its spec.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        terminal: bool,
        stdio: &ExecStdio<'_>,
    ) -> Result<()> {
        self.client
            .tasks()
            .exec(self.request(ExecProcessRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                stdin: path(stdio.stdin),
                stdout: path(stdio.stdout),
                stderr: path(stdio.stderr),
                terminal,
                spec: Some(prost_types::Any {
                    type_url: PROCESS_TYPE_URL.to_string(),
                    value: process_json,
                }),
            }))
            .await
            .map_err(|s| Error::containerd("exec process", s))?;
        Ok(())
    }

    /// Starts exec'd process `exec_id`: the shim opens its stdio FIFOs and
    /// runs `runc exec`. Returns its host PID.
    pub async fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32> {
        let resp = self
            .client
            .tasks()
            .start(self.request(StartRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(|s| Error::containerd("start exec process", s))?;
        Ok(resp.into_inner().pid)
    }

    /// Waits until exec'd process `exec_id` exits; returns its exit status
    /// (128 + N for a death by signal N). Valid before the start too: the
    /// shim answers once the process has exited, or its start failed.
    pub async fn wait_exec(&self, id: &str, exec_id: &str) -> Result<u32> {
        let resp = self
            .client
            .tasks()
            .wait(self.request(WaitRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(|s| Error::containerd("wait exec process", s))?;
        Ok(resp.into_inner().exit_status)
    }

    /// Signals exec'd process `exec_id`; one that is gone or already
    /// stopped is fine.
    pub async fn kill_exec(&self, id: &str, exec_id: &str, signal: i32) -> Result<()> {
        let resp = self
            .client
            .tasks()
            .kill(self.request(KillRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                signal: u32::try_from(signal).unwrap_or(9),
                all: false,
            }))
            .await;
        match resp {
            Ok(_) => Ok(()),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::NotFound | tonic::Code::FailedPrecondition
                ) =>
            {
                Ok(())
            }
            Err(s) => Err(Error::containerd("kill exec process", s)),
        }
    }

    /// Resizes the terminal of exec'd process `exec_id`.
    pub async fn resize_exec(
        &self,
        id: &str,
        exec_id: &str,
        width: u16,
        height: u16,
    ) -> Result<()> {
        self.client
            .tasks()
            .resize_pty(self.request(ResizePtyRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                width: u32::from(width),
                height: u32::from(height),
            }))
            .await
            .map_err(|s| Error::containerd("resize pty", s))?;
        Ok(())
    }

    /// Closes the shim's end of exec'd process `exec_id`'s stdin FIFO: once
    /// the agent's end is closed too, the process reads end-of-file.
    pub async fn close_exec_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        self.client
            .tasks()
            .close_io(self.request(CloseIoRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                stdin: true,
            }))
            .await
            .map_err(|s| Error::containerd("close exec stdin", s))?;
        Ok(())
    }

    /// Deletes exec'd process `exec_id` once it has exited (already gone is
    /// fine); the shim then closes its ends of the FIFOs.
    pub async fn delete_exec(&self, id: &str, exec_id: &str) -> Result<()> {
        let resp = self
            .client
            .tasks()
            .delete_process(self.request(DeleteProcessRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await;
        match resp {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(Error::containerd("delete exec process", s)),
        }
    }
}
