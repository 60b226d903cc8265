//! Which pre-started sandboxes the agent keeps: bookkeeping only, no I/O
//! (the agent builds, claims and destroys them; see
//! [`crate::prestarted`]).
//!
//! The warm images are the pool's `warmImages` (pinned) and the
//! `max_recent` images most recently used by a create; each gets up to
//! `per_image` pre-started sandboxes. An entry is built from one image
//! digest and only claimed for that digest: when a tag moves, entries of
//! the old digest are handed back for destruction.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

/// What the stock holds: a pre-started container.
pub trait Item {
    /// Its container id.
    fn id(&self) -> &str;
    /// Digest of the image it was built from.
    fn digest(&self) -> &str;
}

/// Why a create found nothing to claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// The stock is disabled (size 0).
    Disabled,
    /// The image is not one of the warm images (yet).
    NotWarm,
    /// The image is warm but its stock is empty (a burst drained it, or
    /// it is still being built).
    Empty,
    /// The sandbox's writable layer cap is not the stock's (a cap is fixed
    /// when a root is mounted).
    LayerCap,
}

impl Miss {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Miss::Disabled => "disabled",
            Miss::NotWarm => "not_warm",
            Miss::Empty => "empty",
            Miss::LayerCap => "ephemeral_storage",
        }
    }
}

/// How long the agent must have seen no create before a build starts: a
/// build is a cold create's worth of containerd and runc work, and during a
/// burst every core is wanted by the claims (and the apiserver's side of
/// them).
pub const BUILD_QUIET: std::time::Duration = std::time::Duration::from_millis(200);
/// Longest a build waits for quiet, so a steady stream of creates, never
/// quiet that long, still refills. Longer than a burst lasts: a burst of a
/// hundred claims takes a few seconds on two cores.
pub const BUILD_MAX_DEFER: std::time::Duration = std::time::Duration::from_secs(10);

/// How much longer a build that has waited `waited` must wait when the
/// last create was `since_create` ago (None: never) and its image has
/// `ready` of `per_image` entries; zero when it may start. A stock down
/// to a quarter builds at once: the next creates would go cold, and a cold
/// create costs what a build does, and then some.
pub fn build_delay(
    since_create: Option<std::time::Duration>,
    waited: std::time::Duration,
    ready: usize,
    per_image: usize,
) -> std::time::Duration {
    let Some(since) = since_create else {
        return std::time::Duration::ZERO;
    };
    if ready * 4 <= per_image {
        return std::time::Duration::ZERO;
    }
    BUILD_QUIET
        .saturating_sub(since)
        .min(BUILD_MAX_DEFER.saturating_sub(waited))
}

/// Pre-started sandboxes per warm image.
#[derive(Debug)]
pub struct Stock<T> {
    per_image: usize,
    max_recent: usize,
    pinned: Vec<String>,
    inner: Mutex<Inner<T>>,
}

#[derive(Debug)]
struct Inner<T> {
    /// Images most recently used first, pinned ones excluded.
    recent: VecDeque<String>,
    ready: HashMap<String, Vec<T>>,
    /// Builds in flight per image.
    building: HashMap<String, usize>,
    /// Containers in the agent's hands outside `ready`: being built or
    /// being claimed.
    held: HashSet<String>,
}

impl<T: Item> Stock<T> {
    /// A stock of `per_image` per warm image (0 disables it) for the
    /// `pinned` images and the `max_recent` most recently used others.
    pub fn new(per_image: usize, max_recent: usize, pinned: Vec<String>) -> Self {
        Self {
            per_image,
            max_recent,
            pinned,
            inner: Mutex::new(Inner {
                recent: VecDeque::new(),
                ready: HashMap::new(),
                building: HashMap::new(),
                held: HashSet::new(),
            }),
        }
    }

    /// Whether the stock keeps anything.
    pub fn enabled(&self) -> bool {
        self.per_image > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn warm_in(&self, inner: &Inner<T>, image: &str) -> bool {
        self.pinned.iter().any(|p| p == image) || inner.recent.iter().any(|r| r == image)
    }

    /// Whether `image` is warm now.
    pub fn is_warm(&self, image: &str) -> bool {
        self.enabled() && self.warm_in(&self.lock(), image)
    }

    /// A create used `image`: it becomes the most recent. Returns the
    /// entries of images pushed out, which the caller destroys.
    pub fn note_used(&self, image: &str) -> Vec<T> {
        if !self.enabled() || self.pinned.iter().any(|p| p == image) {
            return Vec::new();
        }
        let mut inner = self.lock();
        inner.recent.retain(|r| r != image);
        inner.recent.push_front(image.to_string());
        let mut out = Vec::new();
        while inner.recent.len() > self.max_recent {
            if let Some(old) = inner.recent.pop_back() {
                out.extend(inner.ready.remove(&old).unwrap_or_default());
            }
        }
        out
    }

    /// Takes an entry of `image` built from `digest` and holds its id until
    /// [`Stock::release`]. Entries of another digest are handed back for
    /// destruction.
    pub fn take(&self, image: &str, digest: &str) -> (Result<T, Miss>, Vec<T>) {
        if !self.enabled() {
            return (Err(Miss::Disabled), Vec::new());
        }
        let mut inner = self.lock();
        if !self.warm_in(&inner, image) {
            return (Err(Miss::NotWarm), Vec::new());
        }
        let Some(list) = inner.ready.get_mut(image) else {
            return (Err(Miss::Empty), Vec::new());
        };
        let (same, stale): (Vec<T>, Vec<T>) = list.drain(..).partition(|t| t.digest() == digest);
        *list = same;
        let got = list.pop();
        if let Some(t) = &got {
            let id = t.id().to_string();
            inner.held.insert(id);
        }
        (got.ok_or(Miss::Empty), stale)
    }

    /// The next image to build an entry for, if any is short: pinned ones
    /// first, then by recency. Counts the build until [`Stock::add`] or
    /// [`Stock::build_failed`].
    pub fn next_build(&self) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        let mut inner = self.lock();
        let candidates: Vec<String> = self
            .pinned
            .iter()
            .chain(inner.recent.iter())
            .cloned()
            .collect();
        let image = candidates.into_iter().find(|i| {
            inner.ready.get(i).map_or(0, Vec::len) + inner.building.get(i).copied().unwrap_or(0)
                < self.per_image
        })?;
        *inner.building.entry(image.clone()).or_default() += 1;
        Some(image)
    }

    /// Holds container `id` (being built or adopted): not in `ready`, but
    /// the agent's.
    pub fn hold(&self, id: &str) {
        self.lock().held.insert(id.to_string());
    }

    /// The agent is done with container `id` (claimed, added or destroyed).
    pub fn release(&self, id: &str) {
        self.lock().held.remove(id);
    }

    fn done_building(inner: &mut Inner<T>, image: &str) {
        if let Some(n) = inner.building.get_mut(image) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.building.remove(image);
            }
        }
    }

    /// A build counted by [`Stock::next_build`] failed.
    pub fn build_failed(&self, image: &str) {
        Self::done_building(&mut self.lock(), image);
    }

    /// A counted build finished (`counted`), or a container was adopted
    /// after a restart: the entry joins the stock of `image`. Handed back
    /// when the image is no longer warm or its stock is full.
    pub fn add(&self, image: &str, entry: T, counted: bool) -> Option<T> {
        let mut inner = self.lock();
        if counted {
            Self::done_building(&mut inner, image);
        }
        inner.held.remove(entry.id());
        let have = inner.ready.get(image).map_or(0, Vec::len);
        if !self.warm_in(&inner, image) || have >= self.per_image {
            return Some(entry);
        }
        inner
            .ready
            .entry(image.to_string())
            .or_default()
            .push(entry);
        None
    }

    /// Takes out the entry whose container is `id` (its process exited).
    pub fn remove_id(&self, id: &str) -> Option<T> {
        let mut inner = self.lock();
        for list in inner.ready.values_mut() {
            if let Some(i) = list.iter().position(|t| t.id() == id) {
                return Some(list.swap_remove(i));
            }
        }
        None
    }

    /// Ids of every container the stock holds, ready or in hand.
    pub fn ids(&self) -> HashSet<String> {
        let inner = self.lock();
        inner
            .ready
            .values()
            .flatten()
            .map(|t| t.id().to_string())
            .chain(inner.held.iter().cloned())
            .collect()
    }

    /// Takes out every ready entry.
    pub fn drain(&self) -> Vec<T> {
        self.lock().ready.drain().flat_map(|(_, v)| v).collect()
    }

    /// Entries of `image` ready to be claimed.
    pub fn ready_of(&self, image: &str) -> usize {
        self.lock().ready.get(image).map_or(0, Vec::len)
    }

    /// Entries per warm image the stock keeps.
    pub fn per_image(&self) -> usize {
        self.per_image
    }

    /// Entries ready to be claimed.
    pub fn ready(&self) -> usize {
        self.lock().ready.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_wait_for_quiet_but_not_forever_nor_when_low() {
        let ms = std::time::Duration::from_millis;
        let full = |since, waited| build_delay(since, waited, 3, 4);
        assert_eq!(full(None, ms(0)), ms(0));
        assert_eq!(full(Some(ms(50)), ms(0)), ms(150));
        assert_eq!(full(Some(BUILD_QUIET), ms(0)), ms(0));
        assert_eq!(full(Some(ms(10)), BUILD_MAX_DEFER - ms(100)), ms(100));
        assert_eq!(full(Some(ms(0)), BUILD_MAX_DEFER), ms(0));
        // Down to a quarter: at once, creates or not.
        assert_eq!(build_delay(Some(ms(0)), ms(0), 1, 4), ms(0));
        assert_eq!(build_delay(Some(ms(0)), ms(0), 8, 32), ms(0));
        assert_eq!(build_delay(Some(ms(0)), ms(0), 9, 32), BUILD_QUIET);
    }

    #[derive(Debug, PartialEq)]
    struct E(&'static str, &'static str);

    impl Item for E {
        fn id(&self) -> &str {
            self.0
        }
        fn digest(&self) -> &str {
            self.1
        }
    }

    #[test]
    fn builds_up_to_the_size_and_claims_by_digest() {
        let s: Stock<E> = Stock::new(2, 2, vec![]);
        assert_eq!(s.take("a", "d1").0.unwrap_err(), Miss::NotWarm);
        assert!(s.note_used("a").is_empty());
        assert_eq!(s.take("a", "d1").0.unwrap_err(), Miss::Empty);
        assert_eq!(s.next_build().as_deref(), Some("a"));
        assert_eq!(s.next_build().as_deref(), Some("a"));
        assert_eq!(s.next_build(), None);
        assert!(s.add("a", E("c1", "d1"), true).is_none());
        assert!(s.add("a", E("c2", "d2"), true).is_none());
        // The tag moved to d2: the d1 entry is handed back.
        let (got, stale) = s.take("a", "d2");
        assert_eq!(got.unwrap(), E("c2", "d2"));
        assert_eq!(stale, [E("c1", "d1")]);
        assert!(s.ids().contains("c2"), "a claim in flight is held");
        s.release("c2");
        assert!(s.ids().is_empty());
        assert_eq!(s.next_build().as_deref(), Some("a"));
    }

    #[test]
    fn pinned_images_come_first_and_are_never_evicted() {
        let s: Stock<E> = Stock::new(1, 1, vec!["p".into()]);
        assert!(s.is_warm("p"));
        s.note_used("a");
        assert_eq!(s.next_build().as_deref(), Some("p"));
        assert_eq!(s.next_build().as_deref(), Some("a"));
        s.add("p", E("cp", "d"), true);
        s.add("a", E("ca", "d"), true);
        assert_eq!(s.note_used("b"), [E("ca", "d")]);
        assert!(s.note_used("p").is_empty());
        assert!(s.is_warm("p") && s.is_warm("b") && !s.is_warm("a"));
        // A build finishing for an evicted image is handed back.
        assert_eq!(s.add("a", E("late", "d"), false), Some(E("late", "d")));
        assert_eq!(s.ready(), 1);
    }

    #[test]
    fn exited_entries_leave_and_adoption_respects_the_size() {
        let s: Stock<E> = Stock::new(1, 4, vec![]);
        s.note_used("a");
        s.hold("c1");
        assert!(s.add("a", E("c1", "d"), false).is_none());
        assert_eq!(s.add("a", E("c2", "d"), false), Some(E("c2", "d")));
        assert_eq!(s.remove_id("c1"), Some(E("c1", "d")));
        assert_eq!(s.remove_id("c1"), None);
        assert_eq!(s.ready(), 0);
    }

    #[test]
    fn a_disabled_stock_keeps_nothing() {
        let s: Stock<E> = Stock::new(0, 4, vec!["p".into()]);
        assert!(!s.enabled() && !s.is_warm("p"));
        assert_eq!(s.take("p", "d").0.unwrap_err(), Miss::Disabled);
        assert_eq!(s.next_build(), None);
    }
}
