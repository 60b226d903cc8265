//! The scoring rule for agent pods, as pure arithmetic.
//!
//! A node's score mixes two terms:
//!
//! * **locality**: the share of the pool's image set the node already holds,
//!   each image weighted by how much the pool wants it (warm images and the
//!   agent's own images fully, images recent sandboxes used by recency) and
//!   by its size, on a logarithmic scale. Unlike the built-in ImageLocality
//!   plugin, a small image counts (an image is never worth less than one)
//!   and an image held by a single node counts fully on that node (there is
//!   no scaling by the share of nodes holding it).
//! * **spread**: `1 / (1 + agents of the pool already on the node)`, so the
//!   agents of one pool do not pile onto the one node with the images.

use std::time::Duration;

use crate::images::ImageId;
use crate::protocol::{MAX_EXTENDER_PRIORITY, MIN_EXTENDER_PRIORITY};

const MIB: f64 = 1024.0 * 1024.0;

/// Knobs of the scoring rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoringConfig {
    /// Share of the score given to spreading a pool's agents (0..=1); the
    /// rest goes to image locality.
    pub spread_weight: f64,
    /// Age at which an image a sandbox used counts half as much.
    pub recent_half_life: Duration,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            spread_weight: 0.3,
            recent_half_life: Duration::from_secs(30 * 60),
        }
    }
}

impl ScoringConfig {
    /// The config with the spread weight clamped into 0..=1 and a non-zero
    /// half-life, whatever the flags said.
    pub fn sanitized(self) -> Self {
        Self {
            spread_weight: if self.spread_weight.is_finite() {
                self.spread_weight.clamp(0.0, 1.0)
            } else {
                0.0
            },
            recent_half_life: self.recent_half_life.max(Duration::from_secs(1)),
        }
    }
}

/// What holding an image is worth: 1 for a tiny image, growing with the log
/// of its size (pull time grows with size, but a missing small image still
/// costs a pull, which is what sandboxes must never wait for).
pub fn image_value(size_bytes: u64) -> f64 {
    1.0 + (1.0 + size_bytes as f64 / MIB).log2()
}

/// Weight of one use of an image `age_secs` ago: 1 now, halving every
/// half-life. Uses dated in the future count as now.
pub fn recency_weight(age_secs: f64, half_life: Duration) -> f64 {
    let age = age_secs.max(0.0);
    0.5f64.powf(age / half_life.as_secs_f64().max(1.0))
}

/// One image of a pool's set with its worth (want weight × image value).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WantedImage {
    /// The image.
    pub id: ImageId,
    /// Want weight times [`image_value`].
    pub worth: f64,
}

/// A pool's image set, ready to score many nodes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageSet {
    /// Sorted by id, one entry per id.
    wanted: Vec<WantedImage>,
    /// Sum of every wanted image's worth, including images no node holds.
    total: f64,
}

impl ImageSet {
    /// Builds a set from `(id, worth)` pairs (duplicates keep the larger
    /// worth) and the worth of wanted images that no node holds.
    pub fn new(mut wanted: Vec<WantedImage>, unheld_worth: f64) -> Self {
        wanted.sort_by(|a, b| a.id.cmp(&b.id).then(b.worth.total_cmp(&a.worth)));
        wanted.dedup_by_key(|w| w.id);
        let total = wanted.iter().map(|w| w.worth).sum::<f64>() + unheld_worth.max(0.0);
        Self { wanted, total }
    }

    /// Whether the pool wants no image at all (locality is then 0 everywhere).
    pub fn is_empty(&self) -> bool {
        self.total <= 0.0
    }

    /// Share (0..=1) of the set's worth present in `held` (sorted ids).
    pub fn locality(&self, held: &[ImageId]) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        let (mut i, mut j, mut sum) = (0, 0, 0.0);
        while i < self.wanted.len() && j < held.len() {
            match self.wanted[i].id.cmp(&held[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    sum += self.wanted[i].worth;
                    i += 1;
                    j += 1;
                }
            }
        }
        (sum / self.total).clamp(0.0, 1.0)
    }
}

/// The extender score (0..=10) of a node with the given locality share and
/// number of the pool's agents already on it.
pub fn node_score(locality: f64, agents_on_node: u32, spread_weight: f64) -> i64 {
    let spread = 1.0 / (1.0 + f64::from(agents_on_node));
    let mixed = (1.0 - spread_weight) * locality.clamp(0.0, 1.0) + spread_weight * spread;
    let score = (mixed * MAX_EXTENDER_PRIORITY as f64).round() as i64;
    score.clamp(MIN_EXTENDER_PRIORITY, MAX_EXTENDER_PRIORITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: u32, worth: f64) -> WantedImage {
        WantedImage {
            id: ImageId(id),
            worth,
        }
    }

    #[test]
    fn small_images_are_worth_something_and_large_ones_more() {
        assert!(image_value(0) >= 1.0);
        assert!(image_value(1024 * 1024) > 1.9);
        assert!(image_value(1 << 30) > image_value(100 << 20));
        // The built-in plugin gives 0 below 23 MiB; here 1 MiB is worth
        // a fifth of 1 GiB.
        assert!(image_value(1 << 20) / image_value(1 << 30) > 0.15);
    }

    #[test]
    fn recency_halves_every_half_life() {
        let hl = Duration::from_secs(60);
        assert_eq!(recency_weight(0.0, hl), 1.0);
        assert!((recency_weight(60.0, hl) - 0.5).abs() < 1e-9);
        assert!((recency_weight(120.0, hl) - 0.25).abs() < 1e-9);
        assert_eq!(recency_weight(-5.0, hl), 1.0);
    }

    #[test]
    fn locality_is_the_held_share_of_worth() {
        let set = ImageSet::new(vec![w(3, 1.0), w(1, 2.0), w(3, 0.5)], 1.0);
        assert_eq!(set.total, 4.0);
        assert_eq!(set.locality(&[]), 0.0);
        assert_eq!(set.locality(&[ImageId(1)]), 0.5);
        assert_eq!(
            set.locality(&[ImageId(0), ImageId(1), ImageId(3), ImageId(9)]),
            0.75
        );
        assert_eq!(ImageSet::default().locality(&[ImageId(1)]), 0.0);
    }

    #[test]
    fn score_mixes_locality_and_spread() {
        assert_eq!(node_score(1.0, 0, 0.3), 10);
        assert_eq!(node_score(0.0, 0, 0.3), 3);
        assert_eq!(node_score(1.0, 1, 0.3), 9); // 7 + 1.5 rounds up
        assert!(node_score(1.0, 4, 0.3) < node_score(1.0, 0, 0.3));
        assert_eq!(node_score(0.0, 0, 0.0), 0);
        assert_eq!(node_score(7.0, 0, 0.0), 10);
    }
}
