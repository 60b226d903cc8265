//! The agent's view of containerd: the handful of gRPC calls a sandbox's
//! life needs, each in the agent's namespace, with typed errors (those of
//! processes exec'd into a sandbox are in the `exec` submodule).

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use containerd_client::Client;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetContainerRequest, GetImageRequest, GetRequest, Image, KillRequest,
    ListContainersRequest, ListImagesRequest, PluginsRequest, ReadContentRequest, StartRequest,
    WaitRequest,
};
use containerd_client::types::Mount;
use containerd_client::types::v1::Status as TaskStatus;
use tonic::Request;
use tonic::metadata::MetadataValue;

use crate::error::{Error, Result};
use crate::image::Descriptor;

mod events;
mod exec;
mod image_labels;
mod lease;
mod snapshot;
mod update;

pub use events::SYNC_TOPIC;
pub use exec::{ExecStdio, PROCESS_TYPE_URL};
pub use lease::LeaseRecord;

/// Type URL containerd expects for an OCI runtime spec held as JSON.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// A task's state as containerd reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Created, not started.
    Created,
    /// Running (or paused).
    Running,
    /// Exited.
    Stopped,
    /// containerd could not say.
    Unknown,
}

/// containerd's plugin type of the mount manager.
const MOUNT_MANAGER_PLUGIN: &str = "io.containerd.mount-manager.v1";

/// Our descriptor of an image's target.
fn descriptor(t: containerd_client::types::Descriptor) -> Descriptor {
    Descriptor {
        media_type: t.media_type,
        digest: t.digest,
        size: t.size,
        platform: None,
    }
}

/// A task as `Get` returns it.
#[derive(Clone, Debug)]
pub struct TaskInfo {
    /// State.
    pub state: TaskState,
    /// Host PID (0 once stopped).
    pub pid: u32,
    /// Exit status once stopped.
    pub exit_status: u32,
    /// Exit time once stopped.
    pub exited_at: Option<DateTime<Utc>>,
}

/// A connection to containerd, bound to one namespace, snapshotter and
/// runtime. Cheap to clone: the gRPC channel is shared.
#[derive(Clone)]
pub struct Containerd {
    client: std::sync::Arc<Client>,
    namespace: MetadataValue<tonic::metadata::Ascii>,
    namespace_name: String,
    snapshotter: String,
    runtime: String,
}

/// Converts a protobuf timestamp.
pub fn timestamp(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let ts = ts?;
    if ts.seconds <= 0 {
        return None;
    }
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(0))
}

impl Containerd {
    /// Connects to the containerd socket at `socket`.
    pub async fn connect(
        socket: &Path,
        namespace: &str,
        snapshotter: &str,
        runtime: &str,
    ) -> Result<Self> {
        let client = Client::from_path(socket).await.map_err(|e| {
            Error::containerd(
                "connect",
                tonic::Status::unavailable(format!("{}: {e}", socket.display())),
            )
        })?;
        let ns = namespace.parse().map_err(|_| {
            Error::containerd(
                "connect",
                tonic::Status::invalid_argument(format!("invalid namespace {namespace:?}")),
            )
        })?;
        Ok(Self {
            client: std::sync::Arc::new(client),
            namespace: ns,
            namespace_name: namespace.to_string(),
            snapshotter: snapshotter.to_string(),
            runtime: runtime.to_string(),
        })
    }

    /// The containerd runtime (shim) sandboxes run in.
    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    /// The containerd namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace_name
    }

    /// The snapshotter sandboxes' rootfs come from.
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        req
    }

    fn leased<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut req = self.request(msg);
        if let Some(lease) = lease
            && let Ok(v) = lease.parse()
        {
            req.metadata_mut().insert("containerd-lease", v);
        }
        req
    }

    /// containerd's plugins, with their capabilities and init errors.
    async fn plugins(&self) -> Result<Vec<containerd_client::services::v1::Plugin>> {
        Ok(self
            .client
            .introspection()
            .plugins(PluginsRequest { filters: vec![] })
            .await
            .map_err(|s| Error::containerd("list plugins", s))?
            .into_inner()
            .plugins)
    }

    /// Whether this containerd mounts a task's root through its mount
    /// manager (2.2 and later), which a capped writable layer needs; the
    /// inner error says what the node runs instead.
    pub async fn mount_manager(&self) -> Result<std::result::Result<(), String>> {
        let plugins = self.plugins().await?;
        if plugins
            .iter()
            .any(|p| p.r#type == MOUNT_MANAGER_PLUGIN && p.init_err.is_none())
        {
            return Ok(Ok(()));
        }
        let version = self
            .client
            .version()
            .version(())
            .await
            .map(|v| v.into_inner().version)
            .unwrap_or_else(|_| "of unknown version".to_string());
        Ok(Err(format!(
            "needs containerd 2.2 or later on the node (its mount manager mounts the capped layer); the node runs containerd {version}"
        )))
    }

    /// The target descriptor of image `name`, or `None` when absent.
    pub async fn image_target(&self, name: &str) -> Result<Option<Descriptor>> {
        Ok(self
            .image(name)
            .await?
            .and_then(|i| i.target)
            .map(descriptor))
    }

    /// Every image in the namespace: name and target.
    pub async fn list_images(&self) -> Result<Vec<(String, Descriptor)>> {
        Ok(self
            .images()
            .await?
            .into_iter()
            .filter_map(|i| Some((i.name, descriptor(i.target?))))
            .collect())
    }

    /// The record of image `name`, or `None` when absent.
    async fn image(&self, name: &str) -> Result<Option<Image>> {
        let resp = self
            .client
            .images()
            .get(self.request(GetImageRequest {
                name: name.to_string(),
            }))
            .await;
        match resp {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(Error::containerd("get image", s)),
        }
    }

    /// Every image record of the namespace.
    async fn images(&self) -> Result<Vec<Image>> {
        let resp = self
            .client
            .images()
            .list(self.request(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(|s| Error::containerd("list images", s))?;
        Ok(resp.into_inner().images)
    }

    /// A whole blob from the content store.
    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let mut stream = self
            .client
            .content()
            .read(self.request(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(|s| Error::containerd("read content", s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| Error::containerd("read content", s))?
        {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// Creates a container record.
    pub async fn create_container(
        &self,
        container: ContainerRecord,
        lease: Option<&str>,
    ) -> Result<()> {
        let c = Container {
            id: container.id,
            labels: container.labels,
            image: container.image,
            runtime: Some(Runtime {
                name: self.runtime.clone(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: container.spec_json,
            }),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: container.snapshot_key,
            ..Default::default()
        };
        self.client
            .containers()
            .create(self.leased(CreateContainerRequest { container: Some(c) }, lease))
            .await
            .map_err(|s| Error::containerd("create container", s))?;
        Ok(())
    }

    /// Containers matching every containerd filter in `filters` (ORed).
    pub async fn list_containers(&self, filters: Vec<String>) -> Result<Vec<Container>> {
        let resp = self
            .client
            .containers()
            .list(self.request(ListContainersRequest { filters }))
            .await
            .map_err(|s| Error::containerd("list containers", s))?;
        Ok(resp.into_inner().containers)
    }

    /// The container record `id`, or `None` when there is none.
    pub async fn container(&self, id: &str) -> Result<Option<Container>> {
        let resp = self
            .client
            .containers()
            .get(self.request(GetContainerRequest { id: id.to_string() }))
            .await;
        match resp {
            Ok(r) => Ok(r.into_inner().container),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(Error::containerd("get container", s)),
        }
    }

    /// Deletes a container record (already gone is fine).
    pub async fn delete_container(&self, id: &str) -> Result<()> {
        let resp = self
            .client
            .containers()
            .delete(self.request(DeleteContainerRequest { id: id.to_string() }))
            .await;
        match resp {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(Error::containerd("delete container", s)),
        }
    }

    /// Creates the task (the shim sets up the process, not started yet) with
    /// stdout and stderr going to files on the host; returns its PID.
    pub async fn create_task(
        &self,
        id: &str,
        rootfs: Vec<Mount>,
        stdout: &Path,
        stderr: &Path,
    ) -> Result<u32> {
        let resp = self
            .client
            .tasks()
            .create(self.request(CreateTaskRequest {
                container_id: id.to_string(),
                rootfs,
                stdin: String::new(),
                stdout: stdout.to_string_lossy().into_owned(),
                stderr: stderr.to_string_lossy().into_owned(),
                terminal: false,
                ..Default::default()
            }))
            .await
            .map_err(|s| Error::containerd("create task", s))?;
        Ok(resp.into_inner().pid)
    }

    /// Starts a created task.
    pub async fn start_task(&self, id: &str) -> Result<u32> {
        let resp = self
            .client
            .tasks()
            .start(self.request(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| Error::containerd("start task", s))?;
        Ok(resp.into_inner().pid)
    }

    /// The task of container `id`, or `None` when it has none.
    pub async fn task(&self, id: &str) -> Result<Option<TaskInfo>> {
        self.process(id, "").await
    }

    /// Process `exec_id` of container `id`'s task (`""`: its init), or
    /// `None` when there is no such process.
    pub async fn process(&self, id: &str, exec_id: &str) -> Result<Option<TaskInfo>> {
        let resp = self
            .client
            .tasks()
            .get(self.request(GetRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await;
        let process = match resp {
            Ok(r) => match r.into_inner().process {
                Some(p) => p,
                None => return Ok(None),
            },
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(Error::containerd("get task", s)),
        };
        let state = match TaskStatus::try_from(process.status).unwrap_or(TaskStatus::Unknown) {
            TaskStatus::Created => TaskState::Created,
            TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => TaskState::Running,
            TaskStatus::Stopped => TaskState::Stopped,
            TaskStatus::Unknown => TaskState::Unknown,
        };
        Ok(Some(TaskInfo {
            state,
            pid: process.pid,
            exit_status: process.exit_status,
            exited_at: timestamp(process.exited_at.as_ref()),
        }))
    }

    /// Sends `signal` to the task's init process (or every process with
    /// `all`). A task that is gone or already stopped is fine.
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let resp = self
            .client
            .tasks()
            .kill(self.request(KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal: u32::try_from(signal).unwrap_or(9),
                all,
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
            Err(s) => Err(Error::containerd("kill task", s)),
        }
    }

    /// Waits until the task exits; returns its exit status and time.
    pub async fn wait(&self, id: &str) -> Result<(u32, Option<DateTime<Utc>>)> {
        let resp = self
            .client
            .tasks()
            .wait(self.request(WaitRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| Error::containerd("wait task", s))?
            .into_inner();
        Ok((resp.exit_status, timestamp(resp.exited_at.as_ref())))
    }

    /// Deletes a stopped task (already gone is fine).
    pub async fn delete_task(&self, id: &str) -> Result<bool> {
        let resp = self
            .client
            .tasks()
            .delete(self.request(DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await;
        match resp {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(Error::containerd("delete task", s)),
        }
    }
}

/// What a container record is made of.
#[derive(Clone, Debug)]
pub struct ContainerRecord {
    /// Container ID.
    pub id: String,
    /// Image name.
    pub image: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// OCI runtime spec as JSON.
    pub spec_json: Vec<u8>,
    /// Key of the rootfs snapshot.
    pub snapshot_key: String,
}

/// Whether the process whose `/proc/<pid>/status` is `status` may lower an
/// `oom_score_adj` (`CAP_SYS_RESOURCE`, bit 24 of `CapEff`). gVisor's shim
/// sets its own to -999 as it starts and fails without it, so a node whose
/// root lacks it cannot run gVisor.
pub fn may_lower_oom_score(status: &str) -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|eff| eff & (1 << CAP_SYS_RESOURCE) != 0)
}

#[cfg(test)]
mod oom_score_tests {
    use super::may_lower_oom_score;

    #[test]
    fn cap_sys_resource_is_read_from_the_effective_set() {
        assert!(may_lower_oom_score(
            "CapPrm:\t0\nCapEff:\t000001ffffffffff\n"
        ));
        assert!(!may_lower_oom_score("CapEff:\t000001fffeffffff\n"));
        assert!(!may_lower_oom_score("Name: x\n"));
        assert!(!may_lower_oom_score("CapEff:\tzz\n"));
    }
}
