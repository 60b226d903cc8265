//! Snapshots prepared ahead of time for the most recently used images, so a
//! create skips the snapshot prepare on its hot path. Only bookkeeping
//! lives here; the agent prepares and removes the snapshots.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use containerd_client::types::Mount;

/// One prepared, unused snapshot.
#[derive(Clone, Debug)]
pub struct WarmSnapshot {
    /// Snapshot key.
    pub key: String,
    /// Its mounts, as the prepare call returned them.
    pub mounts: Vec<Mount>,
}

/// Prepared snapshots per image chain ID, for the `max_images` most
/// recently used images, `per_image` each.
#[derive(Debug)]
pub struct WarmPool {
    per_image: usize,
    max_images: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Chain IDs, most recently used first.
    recent: VecDeque<String>,
    ready: HashMap<String, Vec<WarmSnapshot>>,
    /// Prepares in flight per chain ID.
    filling: HashMap<String, usize>,
}

impl WarmPool {
    /// A pool; `per_image == 0` disables it.
    pub fn new(per_image: usize, max_images: usize) -> Self {
        Self {
            per_image,
            max_images: max_images.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Whether the pool keeps anything.
    pub fn enabled(&self) -> bool {
        self.per_image > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a prepared snapshot of `chain_id` and marks the image as just
    /// used. Returns the snapshots of images pushed out of the pool, which
    /// the caller removes.
    pub fn take(&self, chain_id: &str) -> (Option<WarmSnapshot>, Vec<WarmSnapshot>) {
        if !self.enabled() {
            return (None, vec![]);
        }
        let mut inner = self.lock();
        inner.recent.retain(|c| c != chain_id);
        inner.recent.push_front(chain_id.to_string());
        let mut evicted = Vec::new();
        while inner.recent.len() > self.max_images {
            if let Some(old) = inner.recent.pop_back() {
                evicted.extend(inner.ready.remove(&old).unwrap_or_default());
            }
        }
        let got = inner.ready.get_mut(chain_id).and_then(Vec::pop);
        (got, evicted)
    }

    /// How many prepares to start for `chain_id` now; the caller reports
    /// each with [`WarmPool::add`] or [`WarmPool::failed`].
    pub fn claim_refill(&self, chain_id: &str) -> usize {
        let mut inner = self.lock();
        if !inner.recent.iter().any(|c| c == chain_id) {
            return 0;
        }
        let have = inner.ready.get(chain_id).map_or(0, Vec::len)
            + inner.filling.get(chain_id).copied().unwrap_or(0);
        let want = self.per_image.saturating_sub(have);
        if want > 0 {
            *inner.filling.entry(chain_id.to_string()).or_default() += want;
        }
        want
    }

    fn done_filling(inner: &mut Inner, chain_id: &str) {
        if let Some(n) = inner.filling.get_mut(chain_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.filling.remove(chain_id);
            }
        }
    }

    /// A claimed prepare finished. Returns the snapshot back when its image
    /// left the pool meanwhile (the caller removes it).
    pub fn add(&self, chain_id: &str, snap: WarmSnapshot) -> Option<WarmSnapshot> {
        let mut inner = self.lock();
        Self::done_filling(&mut inner, chain_id);
        if !inner.recent.iter().any(|c| c == chain_id) {
            return Some(snap);
        }
        inner
            .ready
            .entry(chain_id.to_string())
            .or_default()
            .push(snap);
        None
    }

    /// A claimed prepare failed.
    pub fn failed(&self, chain_id: &str) {
        Self::done_filling(&mut self.lock(), chain_id);
    }

    /// Empties the pool and returns the keys of its snapshots.
    pub fn drain(&self) -> Vec<String> {
        let mut inner = self.lock();
        inner.recent.clear();
        inner
            .ready
            .drain()
            .flat_map(|(_, v)| v)
            .map(|s| s.key)
            .collect()
    }

    /// Keys of every prepared snapshot.
    pub fn keys(&self) -> Vec<String> {
        self.lock()
            .ready
            .values()
            .flatten()
            .map(|s| s.key.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(k: &str) -> WarmSnapshot {
        WarmSnapshot {
            key: k.into(),
            mounts: vec![],
        }
    }

    #[test]
    fn refills_up_to_per_image_and_hands_out() {
        let pool = WarmPool::new(2, 2);
        assert!(pool.take("a").0.is_none());
        assert_eq!(pool.claim_refill("a"), 2);
        assert_eq!(pool.claim_refill("a"), 0);
        assert!(pool.add("a", snap("a1")).is_none());
        assert!(pool.add("a", snap("a2")).is_none());
        assert_eq!(pool.take("a").0.unwrap().key, "a2");
        assert_eq!(pool.claim_refill("a"), 1);
    }

    #[test]
    fn least_recent_image_is_evicted() {
        let pool = WarmPool::new(1, 2);
        pool.take("a");
        pool.claim_refill("a");
        pool.add("a", snap("a1"));
        pool.take("b");
        let (_, evicted) = pool.take("c");
        assert_eq!(
            evicted.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(),
            ["a1"]
        );
        // A prepare finishing for an evicted image is handed back.
        assert_eq!(pool.claim_refill("a"), 0);
        assert!(pool.add("a", snap("late")).is_some());
    }

    #[test]
    fn disabled_pool_keeps_nothing() {
        let pool = WarmPool::new(0, 4);
        assert!(!pool.enabled());
        assert!(pool.take("a").0.is_none());
        assert_eq!(pool.claim_refill("a"), 0);
    }
}
