//! Snapshots: a sandbox's writable root on top of its image's unpacked
//! layers, and whether the snapshotter can map IDs for user namespaces.

use std::collections::HashMap;

use containerd_client::services::v1::snapshots::{
    ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest,
};
use containerd_client::types::Mount;

use super::Containerd;
use crate::error::{Error, Result};
/// Plugin type of snapshotters.
const SNAPSHOTTER_PLUGIN: &str = "io.containerd.snapshotter.v1";
/// A snapshotter capability: it honours ID mapping labels with idmapped
/// mounts.
const REMAP_IDS: &str = "remap-ids";

impl Containerd {
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
}
