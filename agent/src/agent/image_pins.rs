//! The agent's side of image pins (see [`crate::pin`]): the images its
//! sandboxes and its stock need are marked and pinned against the
//! kubelet's image garbage collection; those it marked and no longer needs
//! are released, and the janitor releases the marks of gone agents.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fast_sandbox_api::image::normalize;
use tokio::sync::watch;

use super::{Agent, Turns};
use crate::error::Result;
use crate::pin::{self, LabelChange};

/// How often pins are brought in line without a change to wake it.
const PIN_SYNC_PERIOD: Duration = Duration::from_secs(60);
/// How long a change waits for the next: a burst of creates is one sync.
const PIN_SYNC_SETTLE: Duration = Duration::from_millis(500);

impl Agent {
    /// Images this agent needs now: its sandboxes' (running or not, until
    /// deleted) and its stock's (the pool's warm images).
    fn needed_images(&self) -> HashSet<String> {
        let mut needed: HashSet<String> = self
            .table()
            .list()
            .into_iter()
            .map(|i| normalize(&i.image))
            .collect();
        needed.extend(self.cfg.stock_images.iter().map(|i| normalize(i)));
        needed
    }

    /// Marks and pins every image this agent needs, and releases those it
    /// marked and no longer needs. Returns how many images it changed.
    pub async fn sync_pins(&self) -> Result<usize> {
        let needed = self.needed_images();
        let own = pin::mark(&self.cfg.pod_uid);
        let mut changed = 0;
        for (name, labels) in self.cd.images_with_labels().await? {
            let change = if needed.contains(&normalize(&name)) {
                pin::hold(&labels, &self.cfg.pod_uid)
            } else if labels.contains_key(&own) {
                pin::release(&labels, |a| a == self.cfg.pod_uid)
            } else {
                None
            };
            if let Some(c) = change {
                self.change_pin(&name, &c).await?;
                changed += 1;
            }
        }
        self.metrics.set_pinned_images(needed.len());
        Ok(changed)
    }

    /// Releases the marks of the agents `gone` names on every image.
    pub(super) async fn release_pins_of(&self, gone: impl Fn(&str) -> bool) -> Result<()> {
        for (name, labels) in self.cd.images_with_labels().await? {
            if let Some(c) = pin::release(&labels, &gone) {
                tracing::info!(image = %name, "janitor released the image marks of gone agents");
                self.change_pin(&name, &c).await?;
            }
        }
        Ok(())
    }

    /// Applies `change` to image `name`; after a release, pins again what
    /// another agent marked meanwhile.
    async fn change_pin(&self, name: &str, change: &LabelChange) -> Result<()> {
        if !self.cd.update_image_labels(name, change).await? || change.remove.is_empty() {
            return Ok(());
        }
        if let Some(labels) = self.cd.image_labels(name).await?
            && let Some(again) = pin::repin(&labels)
        {
            self.cd.update_image_labels(name, &again).await?;
        }
        Ok(())
    }

    /// Asks for a pin sync: a sandbox was made or deleted.
    pub(super) fn pins_changed(&self) {
        self.pins.notify_one();
    }

    /// Syncs pins when asked and every period, until `shutdown`.
    pub(super) async fn keep_images_pinned(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut turns = Turns::every(PIN_SYNC_PERIOD);
        while let Some(woken) = turns.next(Some(&self.pins), &mut shutdown).await {
            if woken {
                tokio::time::sleep(PIN_SYNC_SETTLE).await;
            }
            if let Err(e) = self.sync_pins().await {
                tracing::warn!(error = %e, "pinning the images sandboxes need failed; retrying");
            }
        }
    }
}
