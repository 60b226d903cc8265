//! The agent's view of containerd: the handful of gRPC calls a sandbox's
//! life needs, each in the agent's namespace, with typed errors (those of
//! processes exec'd into a sandbox are in the `exec` submodule).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use containerd_client::Client;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{
    ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest,
};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateRequest as CreateLeaseRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteRequest as DeleteLeaseRequest, DeleteTaskRequest,
    GetContainerRequest, GetImageRequest, GetRequest, Image, KillRequest, ListContainersRequest,
    ListImagesRequest, ListRequest as ListLeasesRequest, PluginsRequest, PublishRequest,
    ReadContentRequest, StartRequest, SubscribeRequest, WaitRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use containerd_client::types::{Envelope, Mount};
use tokio::sync::mpsc;
use tonic::Request;
use tonic::metadata::MetadataValue;

use crate::error::{Error, Result};
use crate::image::Descriptor;

mod exec;
mod image_labels;
mod update;

pub use exec::{ExecStdio, PROCESS_TYPE_URL};

/// Type URL containerd expects for an OCI runtime spec held as JSON.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Lease label that makes containerd's garbage collector drop the lease
/// (and whatever only it references) after a time.
const LEASE_EXPIRE_LABEL: &str = "containerd.io/gc.expire";
/// Topic of the marker event that proves an event subscription is live.
pub const SYNC_TOPIC: &str = "/fast-sandbox/agent/sync";
/// Type URL of the marker event.
const SYNC_TYPE_URL: &str = "types.fast.io/agent/sync";
/// The marker is published again after this long without coming back.
const SYNC_RESEND: Duration = Duration::from_millis(100);
/// A subscription that does not go live within this long is an error.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

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
/// Plugin type of snapshotters.
const SNAPSHOTTER_PLUGIN: &str = "io.containerd.snapshotter.v1";
/// A snapshotter capability: it honours ID mapping labels with idmapped
/// mounts.
const REMAP_IDS: &str = "remap-ids";

/// Our descriptor of an image's target.
fn descriptor(t: containerd_client::types::Descriptor) -> Descriptor {
    Descriptor {
        media_type: t.media_type,
        digest: t.digest,
        size: t.size,
        platform: None,
    }
}

/// One lease as containerd lists it.
#[derive(Clone, Debug)]
pub struct LeaseRecord {
    /// The lease's name.
    pub id: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// When it was made.
    pub created_at: Option<DateTime<Utc>>,
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

    /// Creates a lease that expires after `ttl` unless deleted first; what is
    /// created under it and never referenced otherwise is then collected. A
    /// lease of that name that exists already serves as is.
    pub async fn create_lease(
        &self,
        id: &str,
        ttl: Option<Duration>,
        labels: HashMap<String, String>,
    ) -> Result<String> {
        let mut labels = labels;
        if let Some(ttl) = ttl {
            let expire = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
            labels.insert(
                LEASE_EXPIRE_LABEL.to_string(),
                expire.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
        }
        self.claim_lease(id, labels).await?;
        Ok(id.to_string())
    }

    /// Creates the lease `id` with `labels` unless it exists: true when
    /// this call made it. A lease name is unique in a containerd namespace,
    /// so it claims a name for every agent on the node at once.
    pub async fn claim_lease(&self, id: &str, labels: HashMap<String, String>) -> Result<bool> {
        let resp = self
            .client
            .leases()
            .create(self.request(CreateLeaseRequest {
                id: id.to_string(),
                labels,
            }))
            .await;
        match resp {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(false),
            Err(s) => Err(Error::containerd("create lease", s)),
        }
    }

    /// The leases whose ids start with `prefix`: id, labels, creation time.
    pub async fn leases(&self, prefix: &str) -> Result<Vec<LeaseRecord>> {
        let resp = self
            .client
            .leases()
            .list(self.request(ListLeasesRequest { filters: vec![] }))
            .await
            .map_err(|s| Error::containerd("list leases", s))?;
        Ok(resp
            .into_inner()
            .leases
            .into_iter()
            .filter(|l| l.id.starts_with(prefix))
            .map(|l| LeaseRecord {
                created_at: timestamp(l.created_at.as_ref()),
                id: l.id,
                labels: l.labels,
            })
            .collect())
    }

    /// Whether the snapshotter can give a snapshot an ID mapping with
    /// idmapped mounts (containerd 2 on a kernel that supports them), which
    /// user namespaces need; the inner error says what the node lacks.
    pub async fn idmapped_snapshots(&self) -> Result<std::result::Result<(), String>> {
        let plugins = self.plugins().await?;
        let snapshotter = plugins
            .iter()
            .find(|p| p.r#type == SNAPSHOTTER_PLUGIN && p.id == self.snapshotter);
        match snapshotter {
            Some(p) if p.capabilities.iter().any(|c| c == REMAP_IDS) => Ok(Ok(())),
            Some(_) => Ok(Err(format!(
                "the {} snapshotter cannot idmap a sandbox's root filesystem (it needs containerd 2 on a kernel with idmapped overlay layers, 5.19 or later)",
                self.snapshotter
            ))),
            None => Ok(Err(format!(
                "containerd has no {} snapshotter",
                self.snapshotter
            ))),
        }
    }

    /// Deletes a lease (already gone is fine).
    pub async fn delete_lease(&self, id: &str) -> Result<()> {
        let resp = self
            .client
            .leases()
            .delete(self.request(DeleteLeaseRequest {
                id: id.to_string(),
                sync: false,
            }))
            .await;
        match resp {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(Error::containerd("delete lease", s)),
        }
    }

    /// Whether the committed snapshot `key` exists (an unpacked image).
    pub async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        let resp = self
            .client
            .snapshots()
            .stat(self.request(StatSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await;
        match resp {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(Error::containerd("stat snapshot", s)),
        }
    }

    /// Prepares an active snapshot on top of `parent` and returns its mounts.
    pub async fn prepare_snapshot(
        &self,
        key: &str,
        parent: &str,
        lease: Option<&str>,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let resp = self
            .client
            .snapshots()
            .prepare(self.leased(
                PrepareSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.to_string(),
                    parent: parent.to_string(),
                    labels,
                },
                lease,
            ))
            .await
            .map_err(|s| Error::containerd("prepare snapshot", s))?;
        Ok(resp.into_inner().mounts)
    }

    /// Mounts of an existing active snapshot.
    pub async fn snapshot_mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let resp = self
            .client
            .snapshots()
            .mounts(self.request(MountsRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
            .map_err(|s| Error::containerd("snapshot mounts", s))?;
        Ok(resp.into_inner().mounts)
    }

    /// Removes a snapshot (already gone is fine).
    pub async fn remove_snapshot(&self, key: &str) -> Result<()> {
        let resp = self
            .client
            .snapshots()
            .remove(self.request(RemoveSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await;
        match resp {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(Error::containerd("remove snapshot", s)),
        }
    }

    /// Keys of every snapshot whose key starts with `prefix`.
    pub async fn snapshot_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let mut stream = self
            .client
            .snapshots()
            .list(self.request(ListSnapshotsRequest {
                snapshotter: self.snapshotter.clone(),
                filters: vec![],
            }))
            .await
            .map_err(|s| Error::containerd("list snapshots", s))?
            .into_inner();
        let mut keys = Vec::new();
        while let Some(batch) = stream
            .message()
            .await
            .map_err(|s| Error::containerd("list snapshots", s))?
        {
            keys.extend(
                batch
                    .info
                    .into_iter()
                    .map(|i| i.name)
                    .filter(|n| n.starts_with(prefix)),
            );
        }
        Ok(keys)
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

    /// Subscribes to containerd events whose topic is one of `topics`, in
    /// this namespace, and returns once the subscription is live.
    ///
    /// containerd sends no response headers on a subscription until the
    /// first event, so the call runs in its own task and the agent publishes
    /// a marker event on [`SYNC_TOPIC`] until it comes back through the
    /// stream: from then on no event can be missed.
    pub async fn subscribe(
        &self,
        topics: &[&str],
    ) -> Result<mpsc::Receiver<std::result::Result<Envelope, tonic::Status>>> {
        let filters = topics
            .iter()
            .chain([&SYNC_TOPIC])
            .map(|t| format!("namespace=={},topic==\"{t}\"", self.namespace_name))
            .collect();
        let (tx, mut rx) = mpsc::channel(1024);
        let mut events = self.client.events();
        tokio::spawn(async move {
            let mut stream = match events.subscribe(SubscribeRequest { filters }).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    let _ = tx.send(Err(s)).await;
                    return;
                }
            };
            loop {
                tokio::select! {
                    msg = stream.message() => match msg {
                        Ok(Some(env)) => {
                            if tx.send(Ok(env)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(s) => {
                            let _ = tx.send(Err(s)).await;
                            return;
                        }
                    },
                    () = tx.closed() => return,
                }
            }
        });
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or(0)
        );
        let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
        loop {
            self.client
                .events()
                .publish(self.request(PublishRequest {
                    topic: SYNC_TOPIC.to_string(),
                    event: Some(prost_types::Any {
                        type_url: SYNC_TYPE_URL.to_string(),
                        value: nonce.clone().into_bytes(),
                    }),
                }))
                .await
                .map_err(|s| Error::containerd("publish sync event", s))?;
            let resend = tokio::time::sleep(SYNC_RESEND);
            tokio::pin!(resend);
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(Ok(env)) if env.topic == SYNC_TOPIC => {
                            if env.event.is_some_and(|e| e.value == nonce.as_bytes()) {
                                return Ok(rx);
                            }
                        }
                        // Real events before the marker belong to the
                        // rebuild that follows; dropping them loses nothing.
                        Some(Ok(_)) => {}
                        Some(Err(s)) => return Err(Error::containerd("subscribe to events", s)),
                        None => {
                            return Err(Error::containerd(
                                "subscribe to events",
                                tonic::Status::unavailable("event stream ended"),
                            ))
                        }
                    },
                    () = &mut resend => break,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::containerd(
                    "subscribe to events",
                    tonic::Status::deadline_exceeded(format!(
                        "the subscription did not go live in {SYNC_TIMEOUT:?}"
                    )),
                ));
            }
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
