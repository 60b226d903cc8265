//! User namespaces: a sandbox's uid 0 is an unprivileged host uid.
//!
//! Each sandbox (and each pre-started one, which becomes a sandbox when
//! claimed) gets a slot: 65536 host uids and gids of its own, starting at
//! `first + slot * 65536`, mapped to 0..65535 inside. No two containers
//! of the node share a slot, whichever agent made them: a slot is taken by
//! creating the containerd lease named after its first host id, and a lease
//! name is unique in containerd's namespace. The container carries that id
//! as a label; the lease is deleted with the container, and a sweep
//! deletes the leases no container holds (an agent killed between the
//! two).
//!
//! The root filesystem is mapped, not copied: the snapshot carries the
//! mapping as labels, and containerd 2's overlayfs snapshotter mounts the
//! image's layers idmapped and gives the writable layer's root to the
//! sandbox's root.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use fast_sandbox_api::wellknown::container_labels;

use crate::runtime::LeaseRecord;

/// Host ids each sandbox gets.
pub const IDS_PER_SANDBOX: u32 = 65536;
/// Leases that hold a slot are named this, then the slot's first host id.
pub const SLOT_LEASE_PREFIX: &str = "fast-sandbox-userns-";
/// Label of a slot lease naming the container it was taken for (for
/// people reading leases; the containers' own slot labels are the truth).
pub const LEASE_CONTAINER_LABEL: &str = "sandbox.fast.io/container";
/// Snapshot labels containerd's snapshotters read the mapping from.
const UID_MAPPING_LABEL: &str = "containerd.io/snapshot/uidmapping";
const GID_MAPPING_LABEL: &str = "containerd.io/snapshot/gidmapping";

/// The host ids sandboxes' user namespaces are carved from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    /// First host id of slot 0.
    pub first: u32,
    /// How many slots of [`IDS_PER_SANDBOX`] ids follow it.
    pub slots: u32,
}

impl Default for IdRange {
    /// 2^31 on, 16384 slots: far above any host user's id. Where pods
    /// also run with `hostUsers: false`, keep the kubelet's range (its
    /// `/etc/subuid` entry) apart from this one.
    fn default() -> Self {
        Self {
            first: 1 << 31,
            slots: 16384,
        }
    }
}

impl IdRange {
    /// Parses `FIRST:SLOTS`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (first, slots) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?} is not FIRST:SLOTS"))?;
        let first: u32 = first
            .parse()
            .map_err(|e| format!("first host id {first:?}: {e}"))?;
        let slots: u32 = slots
            .parse()
            .map_err(|e| format!("slot count {slots:?}: {e}"))?;
        if first < IDS_PER_SANDBOX {
            return Err(format!(
                "first host id {first} is below {IDS_PER_SANDBOX}: sandboxes would share host users' ids"
            ));
        }
        if slots == 0 {
            return Err("the slot count must be at least 1".into());
        }
        let end = u64::from(first) + u64::from(slots) * u64::from(IDS_PER_SANDBOX);
        if end > u64::from(u32::MAX) {
            return Err(format!(
                "{slots} slots from {first} end past the largest host id ({end} > {})",
                u32::MAX
            ));
        }
        Ok(Self { first, slots })
    }

    /// The mapping of `slot`.
    pub fn mapping(&self, slot: u32) -> Mapping {
        Mapping {
            host_base: self.first + slot * IDS_PER_SANDBOX,
        }
    }

    /// Slots to try for container `id`, each once: from one its id picks,
    /// so concurrent creates on the node rarely race for the same one.
    pub fn probe(&self, id: &str) -> impl Iterator<Item = u32> + use<> {
        let start = (fnv(id) % u64::from(self.slots)) as u32;
        let slots = self.slots;
        (0..slots).map(move |i| (start + i) % slots)
    }
}

/// One sandbox's user namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The host id its uid and gid 0 are: the slot's first.
    pub host_base: u32,
}

impl Mapping {
    /// The name of the lease that holds the slot.
    pub fn lease_id(&self) -> String {
        format!("{SLOT_LEASE_PREFIX}{}", self.host_base)
    }

    /// Labels of the slot's lease, for container `id`.
    pub fn lease_labels(&self, container_id: &str) -> HashMap<String, String> {
        HashMap::from([(LEASE_CONTAINER_LABEL.to_string(), container_id.to_string())])
    }

    /// The containerd form of the mapping, `container:host:size`.
    pub fn containerd_form(&self) -> String {
        format!("0:{}:{IDS_PER_SANDBOX}", self.host_base)
    }

    /// Labels that make a prepared snapshot idmapped to this namespace.
    pub fn snapshot_labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (UID_MAPPING_LABEL.to_string(), self.containerd_form()),
            (GID_MAPPING_LABEL.to_string(), self.containerd_form()),
        ])
    }

    /// The slot a container holds, by its labels.
    pub fn of_container(labels: &HashMap<String, String>) -> Option<Self> {
        let host_base = labels.get(container_labels::USERNS_SLOT)?.parse().ok()?;
        Some(Self { host_base })
    }

    /// The label that says a container holds this slot.
    pub fn container_label(&self) -> (String, String) {
        (
            container_labels::USERNS_SLOT.to_string(),
            self.host_base.to_string(),
        )
    }

    /// The host id of id `inner` in the sandbox.
    pub fn host_id(&self, inner: u32) -> u32 {
        self.host_base + inner.min(IDS_PER_SANDBOX - 1)
    }
}

/// The first host id of the slot a lease named `id` holds.
pub fn lease_base(id: &str) -> Option<u32> {
    id.strip_prefix(SLOT_LEASE_PREFIX)?.parse().ok()
}

/// Slot leases to delete: those whose slot no container holds (by the
/// first host ids in the containers' labels, `held`), made before `cutoff` (a younger one
/// may belong to a create whose container is not made yet).
pub fn stale_leases(
    leases: &[LeaseRecord],
    held: &HashSet<u32>,
    cutoff: DateTime<Utc>,
) -> Vec<String> {
    leases
        .iter()
        .filter(|l| lease_base(&l.id).is_some_and(|b| !held.contains(&b)))
        .filter(|l| l.created_at.is_none_or(|t| t < cutoff))
        .map(|l| l.id.clone())
        .collect()
}

/// 64-bit FNV-1a.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The host id inside-id 0 maps to in the text of a `/proc/<pid>/uid_map`
/// or `gid_map`; `None` when 0 is unmapped (no user namespace maps it as
/// itself: the initial namespace's map is `0 0 4294967295`).
pub fn host_root(map: &str) -> Option<u32> {
    map.lines().find_map(|l| {
        let mut f = l.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(inner)), Some(Ok(host)), Some(Ok(len))) = (f.next(), f.next(), f.next())
        else {
            return None;
        };
        (inner == 0 && len > 0).then(|| u32::try_from(host).ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str, container: Option<&str>, age_s: i64) -> LeaseRecord {
        LeaseRecord {
            id: id.into(),
            labels: container
                .map(|c| HashMap::from([(LEASE_CONTAINER_LABEL.to_string(), c.to_string())]))
                .unwrap_or_default(),
            created_at: Some(Utc::now() - chrono::Duration::seconds(age_s)),
        }
    }

    #[test]
    fn ranges_parse_and_refuse_overlap_with_host_ids_and_overflow() {
        assert_eq!(
            IdRange::parse("2147483648:16384").unwrap(),
            IdRange::default()
        );
        assert!(IdRange::parse("1000:10").unwrap_err().contains("below"));
        assert!(
            IdRange::parse("65536:0")
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(
            IdRange::parse("4294901760:2")
                .unwrap_err()
                .contains("largest host id")
        );
        assert!(IdRange::parse("4294901760:1").is_err());
        assert!(IdRange::parse("4294836224:1").is_ok());
        assert!(IdRange::parse("x").unwrap_err().contains("FIRST:SLOTS"));
        assert!(IdRange::parse("-1:3").is_err());
    }

    #[test]
    fn slots_are_disjoint_and_probing_visits_each_once() {
        let r = IdRange::default();
        let a = r.mapping(0);
        let b = r.mapping(1);
        assert_eq!(a.host_base, 1 << 31);
        assert_eq!(b.host_base - a.host_base, IDS_PER_SANDBOX);
        assert_eq!(r.mapping(r.slots - 1).host_id(65535), u32::MAX - (1 << 30));
        let small = IdRange {
            first: 65536,
            slots: 7,
        };
        let mut seen: Vec<u32> = small.probe("stock-abc").collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
        assert_ne!(
            small.probe("a").next(),
            small.probe("b").next(),
            "ids spread over slots"
        );
    }

    #[test]
    fn mapping_labels_and_lease_names() {
        let m = IdRange::default().mapping(3);
        assert_eq!(m.lease_id(), "fast-sandbox-userns-2147680256");
        assert_eq!(lease_base(&m.lease_id()), Some(2147680256));
        assert_eq!(lease_base("fast-sandbox-create-x"), None);
        assert_eq!(m.containerd_form(), "0:2147680256:65536");
        let l = m.snapshot_labels();
        assert_eq!(l[UID_MAPPING_LABEL], l[GID_MAPPING_LABEL]);
        assert_eq!(m.host_id(1000), 2147680256 + 1000);
        assert_eq!(m.host_id(70000), 2147680256 + 65535, "clamped to the slot");
    }

    #[test]
    fn only_old_leases_of_unheld_slots_are_stale() {
        let held: HashSet<u32> = [65536].into();
        let leases = vec![
            lease("fast-sandbox-userns-65536", Some("c-live"), 600),
            lease("fast-sandbox-userns-131072", Some("c-gone"), 600),
            lease("fast-sandbox-userns-196608", Some("c-new"), 1),
            lease("fast-sandbox-userns-262144", None, 600),
            lease("fast-sandbox-create-x", Some("c-gone"), 600),
        ];
        let cutoff = Utc::now() - chrono::Duration::seconds(60);
        assert_eq!(
            stale_leases(&leases, &held, cutoff),
            vec!["fast-sandbox-userns-131072", "fast-sandbox-userns-262144"]
        );
    }

    #[test]
    fn host_root_reads_uid_maps() {
        assert_eq!(
            host_root("         0 2147483648      65536\n"),
            Some(1 << 31)
        );
        assert_eq!(host_root("0 0 4294967295\n"), Some(0));
        assert_eq!(host_root("1 1000 10\n"), None);
        assert_eq!(host_root(""), None);
    }
}
