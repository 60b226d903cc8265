//! Building the stock of pre-started sandboxes (see `prestart` for the
//! claim): one build at a time in the background, each build's process at
//! the lowest CPU weight. While the image holds more than a quarter of its
//! stock, a build starts once the agent has seen no create for a moment (a
//! burst keeps every core for its claims) or after a bounded wait; below
//! that it starts at once, so a steady stream of creates keeps finding one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use fast_sandbox_api::wellknown::container_labels as label;
use futures::StreamExt;
use tokio::sync::watch;

use super::prestart::{Prestarted, READY_TIMEOUT};
use super::{Agent, CREATE_LEASE_TTL};
use crate::cgroup;
use crate::error::{Error, Result};
use crate::prestarted::Ends;
use crate::runtime::ContainerRecord;
use crate::spec;
use crate::stock;

/// Pre-started sandboxes removed at once when the stock is released.
const RELEASE_CONCURRENCY: usize = 4;
/// Pause after a failed build before the next; doubles with each failure
/// in a row, up to [`MAX_BUILD_BACKOFF`] (an image that cannot run the
/// init must not keep a core busy).
const BUILD_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause between failed builds.
const MAX_BUILD_BACKOFF: Duration = Duration::from_secs(60);

impl Agent {
    /// Starts the background refill, once.
    pub(super) fn start_refill(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        if !self.stock.enabled() || self.refill_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let handle = tokio::spawn(self.clone().refill_loop(shutdown));
        *self.refill_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }

    async fn refill_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = BUILD_BACKOFF;
        loop {
            if *shutdown.borrow() || self.stock_stopped.load(Ordering::SeqCst) {
                return;
            }
            let Some(image) = self.stock.next_build() else {
                tokio::select! {
                    () = self.refill.notified() => continue,
                    r = shutdown.changed() => if r.is_err() { return } else { continue },
                }
            };
            let wanted = Instant::now();
            loop {
                if *shutdown.borrow() || self.stock_stopped.load(Ordering::SeqCst) {
                    self.stock.build_failed(&image);
                    return;
                }
                let last = *self.last_create.lock().unwrap_or_else(|p| p.into_inner());
                let pause = stock::build_delay(
                    last.map(|t| t.elapsed()),
                    wanted.elapsed(),
                    self.stock.ready_of(&image),
                    self.stock.per_image(),
                );
                if pause.is_zero() {
                    break;
                }
                // Woken early by a claim (the stock may be low now) or by
                // release_stock.
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = self.refill.notified() => {}
                    r = shutdown.changed() => if r.is_err() { return },
                }
            }
            match self.build(&image).await {
                Ok(p) => {
                    backoff = BUILD_BACKOFF;
                    self.metrics.stock_build("ok");
                    if self.stock_stopped.load(Ordering::SeqCst) {
                        self.stock.build_failed(&image);
                        self.discard(&p.id, &p.snapshot_key).await;
                        self.stock.release(&p.id);
                    } else if let Some(back) = self.stock.add(&image, p, true) {
                        self.destroy(back);
                    }
                    self.metrics.set_stock_ready(self.stock.ready());
                }
                Err(e) => {
                    self.stock.build_failed(&image);
                    self.metrics.stock_build("failed");
                    tracing::warn!(%image, error = %e, retry_in = ?backoff, "building a pre-started sandbox failed");
                    let pause = backoff;
                    backoff = (backoff * 2).min(MAX_BUILD_BACKOFF);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        r = shutdown.changed() => if r.is_err() { return },
                    }
                }
            }
        }
    }

    /// A new container id for the stock: unique across the agent's
    /// restarts (its PID may repeat; the clock does not).
    fn stock_id(&self) -> String {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}{}-{nanos:x}{seq:x}",
            cgroup::PRESTARTED_PREFIX,
            self.cfg.pod_uid
        )
    }

    /// Builds one pre-started sandbox of `image_name`: its directory and
    /// FIFO ends first (the init needs a reader for its status), then
    /// snapshot, container and task under a create lease, then waits until
    /// the init says it waits.
    async fn build(&self, image_name: &str) -> Result<Prestarted> {
        let image = self.images.resolve(&self.cd, image_name).await?;
        self.ensure_unpacked(image_name, &image).await?;
        let (uid, gid) = spec::user_ids(image.exec.user.as_deref())?;
        let id = self.stock_id();
        let snapshot_key = format!("{}{id}", self.snapshot_prefix());
        let cgroup_path = cgroup::sandbox_cgroup(&self.cfg.cgroup_parent, &id);
        self.stock.hold(&id);
        let mut mapping = None;
        let built = async {
            mapping = self.take_slot(&id).await?;
            let (uid, gid) = match &mapping {
                Some(m) => (m.host_id(uid), m.host_id(gid)),
                None => (uid, gid),
            };
            let dir = self.prestart.create(&id, uid, gid)?;
            let mut ends = Ends::open(&dir)?;
            let mut spec = spec::prestarted(&image.exec, &cgroup_path, &dir)?;
            if let Some(m) = &mapping {
                spec::map_users(&mut spec, m)?;
            }
            self.join_shim_group(&mut spec);
            let spec_json = serde_json::to_vec(&spec).map_err(|e| Error::Spec(e.to_string()))?;
            let lease = self
                .cd
                .create_lease(
                    &format!("fast-sandbox-create-{id}"),
                    Some(CREATE_LEASE_TTL),
                    Default::default(),
                )
                .await?;
            let made = async {
                let snapshot_labels = mapping.map(|m| m.snapshot_labels()).unwrap_or_default();
                let mut mounts = self
                    .cd
                    .prepare_snapshot(
                        &snapshot_key,
                        &image.chain_id,
                        Some(&lease),
                        snapshot_labels,
                    )
                    .await?;
                let mut labels = std::collections::HashMap::from([
                    (label::MANAGED.to_string(), "true".to_string()),
                    (label::AGENT_UID.to_string(), self.cfg.pod_uid.clone()),
                    (label::PRESTARTED.to_string(), image.digest.clone()),
                ]);
                if let Some(m) = mapping {
                    labels.extend([m.container_label()]);
                }
                if let Some(cap) = self.cfg.stock_layer_cap {
                    mounts = self.capped_mounts(mounts, cap).await?;
                    labels.insert(label::EPHEMERAL_STORAGE.to_string(), cap.to_string());
                }
                self.cd
                    .create_container(
                        ContainerRecord {
                            id: id.clone(),
                            image: image_name.to_string(),
                            labels,
                            spec_json,
                            snapshot_key: snapshot_key.clone(),
                        },
                        Some(&lease),
                    )
                    .await?;
                let (stdout, stderr) = self.logs.create(&id)?;
                let created = self.create_task(&id, mounts, &stdout, &stderr).await?;
                if mapping.is_some() && self.cfg.stock_layer_cap.is_some() {
                    self.own_capped_root(created, &cgroup::leaf(&id, &id)).await?;
                }
                let pid = self.cd.start_task(&id).await?;
                if let Some(cap) = self.cfg.stock_layer_cap {
                    self.verify_layer(pid, cap)?;
                }
                Ok(pid)
            }
            .await;
            if let Err(e) = self.cd.delete_lease(&lease).await {
                tracing::debug!(%lease, error = %e, "deleting a create lease failed; it expires by itself");
            }
            let pid = made?;
            ends.ready(READY_TIMEOUT).await?;
            Ok::<_, Error>((pid, ends))
        }
        .await;
        match built {
            Ok((pid, ends)) => Ok(Prestarted {
                id,
                digest: image.digest.clone(),
                snapshot_key,
                cgroup_path,
                pid,
                ends,
                mapping,
            }),
            Err(e) => {
                self.discard(&id, &snapshot_key).await;
                // The slot, when no container came to hold it.
                self.release_slot(mapping).await;
                self.stock.release(&id);
                Err(e)
            }
        }
    }

    /// Stops refilling and destroys the whole stock, a few at a time:
    /// the controller asks for it before it deletes the agent's pod (a
    /// restarted agent keeps its stock; a gone one's waits for another
    /// agent's janitor on the node), and tests and benchmarks that must
    /// leave nothing behind. Returns how many were removed.
    pub async fn release_stock(&self) -> usize {
        self.stock_stopped.store(true, Ordering::SeqCst);
        self.refill.notify_one();
        let task = self
            .refill_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let stock = self.stock.drain();
        let removed = stock.len();
        futures::stream::iter(stock)
            .for_each_concurrent(RELEASE_CONCURRENCY, |p| async move {
                self.discard(&p.id, &p.snapshot_key).await;
                self.stock.release(&p.id);
            })
            .await;
        self.metrics.set_stock_ready(0);
        if removed > 0 {
            tracing::info!(removed, "released the stock");
        }
        removed
    }
}
