//! The cap of a sandbox's writable layer (`resources.ephemeralStorage`).
//!
//! A capped sandbox's overlay keeps its upper and work directories on a
//! tmpfs of the cap's size instead of the node's disk. containerd's mount
//! manager (2.2 and later) mounts that tmpfs in its own mount namespace when
//! the task is created, makes the two directories and fills their paths
//! into the overlay's options (`format/mkdir/overlay`), and unmounts it when
//! the task is deleted, so nothing of it is the agent's to clean up.
//!
//! The kernel refuses writes past the size (ENOSPC). tmpfs pages are
//! charged to the memory cgroup of the process that writes them, the
//! sandbox's, so the layer counts toward its memory limit too. `statfs` on
//! an overlay reports its upper filesystem, so the agent reads the layer's
//! use through the sandbox's root and fails a sandbox that went past it.

use std::path::Path;

use containerd_client::types::Mount;

/// Room above the cap, so a layer holding exactly its cap is within it
/// and one past it is seen (tmpfs counts whole pages).
const HEADROOM_PAGES: u64 = 1;

/// The tmpfs size of a layer capped at `cap` bytes: the cap rounded up to
/// whole pages, plus the headroom.
pub fn tmpfs_bytes(cap: u64, page: u64) -> u64 {
    cap.div_ceil(page).saturating_add(HEADROOM_PAGES) * page
}

/// The rootfs mounts of a sandbox whose layer is capped at `cap` bytes,
/// from the overlayfs snapshotter's mounts of its snapshot: a tmpfs, then
/// the overlay with its upper and work directories on it. The snapshot's
/// own upper directory stays empty.
pub fn capped(mounts: Vec<Mount>, cap: u64, page: u64) -> Result<Vec<Mount>, String> {
    let [overlay] = <[Mount; 1]>::try_from(mounts).map_err(|m| {
        format!(
            "needs one overlay mount from the snapshotter, got {}",
            m.iter()
                .map(|m| m.r#type.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    if overlay.r#type != "overlay" {
        return Err(format!(
            "needs the overlayfs snapshotter, got a {} mount",
            overlay.r#type
        ));
    }
    // Options containerd would read as a template are refused, not passed.
    if overlay.options.iter().any(|o| o.contains("{{")) {
        return Err("the snapshot's mount options hold template braces".to_string());
    }
    let mut options = vec![
        "X-containerd.mkdir.path={{ mount 0 }}/upper:0755".to_string(),
        "X-containerd.mkdir.path={{ mount 0 }}/work:0755".to_string(),
        "upperdir={{ mount 0 }}/upper".to_string(),
        "workdir={{ mount 0 }}/work".to_string(),
    ];
    options.extend(
        overlay
            .options
            .into_iter()
            .filter(|o| !o.starts_with("upperdir=") && !o.starts_with("workdir=")),
    );
    Ok(vec![
        Mount {
            r#type: "tmpfs".to_string(),
            source: "tmpfs".to_string(),
            target: String::new(),
            options: vec![
                format!("size={}", tmpfs_bytes(cap, page)),
                // tmpfs's own default ratio, one inode per page: files and
                // directories the agent makes for an upload are charged to
                // the agent, and empty ones take no room from `size`.
                format!("nr_inodes={}", tmpfs_bytes(cap, page) / page),
                "mode=755".to_string(),
                "nosuid".to_string(),
                "nodev".to_string(),
            ],
        },
        Mount {
            r#type: "format/mkdir/overlay".to_string(),
            source: overlay.source,
            target: overlay.target,
            options,
        },
    ])
}

/// What a sandbox's writable layer holds and can hold, in bytes, read
/// through its root (`<proc>/<pid>/root`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Bytes written.
    pub used: u64,
    /// Size of the filesystem under the layer.
    pub size: u64,
}

impl Usage {
    /// Reads the layer of the process `pid`.
    pub fn of(proc_root: &Path, pid: u32) -> std::io::Result<Self> {
        let s = rustix::fs::statfs(proc_root.join(pid.to_string()).join("root"))?;
        let block = u64::try_from(s.f_bsize).unwrap_or(0);
        Ok(Self {
            used: s.f_blocks.saturating_sub(s.f_bfree).saturating_mul(block),
            size: s.f_blocks.saturating_mul(block),
        })
    }

    /// Whether this is the tmpfs of a layer capped at `cap`: anything else
    /// (the node's disk) means the cap is not enforced.
    pub fn is_capped_at(&self, cap: u64, page: u64) -> bool {
        self.size == tmpfs_bytes(cap, page)
    }
}

/// The system's page size.
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(options: &[&str]) -> Mount {
        Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn the_upper_and_work_dirs_move_onto_a_tmpfs_of_the_cap() {
        let m = capped(
            vec![overlay(&[
                "index=off",
                "workdir=/snap/9/work",
                "upperdir=/snap/9/fs",
                "lowerdir=/snap/2/fs:/snap/1/fs",
            ])],
            10 << 20,
            4096,
        )
        .unwrap();
        assert_eq!(m[0].r#type, "tmpfs");
        assert_eq!(m[0].options[0], format!("size={}", (10 << 20) + 4096));
        assert_eq!(
            m[0].options[1],
            format!("nr_inodes={}", (10 << 20) / 4096 + 1)
        );
        assert_eq!(m[1].r#type, "format/mkdir/overlay");
        assert_eq!(
            m[1].options,
            [
                "X-containerd.mkdir.path={{ mount 0 }}/upper:0755",
                "X-containerd.mkdir.path={{ mount 0 }}/work:0755",
                "upperdir={{ mount 0 }}/upper",
                "workdir={{ mount 0 }}/work",
                "index=off",
                "lowerdir=/snap/2/fs:/snap/1/fs",
            ]
        );
    }

    #[test]
    fn caps_round_up_to_pages_with_one_page_of_headroom() {
        assert_eq!(tmpfs_bytes(1, 4096), 8192);
        assert_eq!(tmpfs_bytes(4096, 4096), 8192);
        assert_eq!(tmpfs_bytes(4097, 4096), 12288);
        let u = Usage {
            used: 0,
            size: 8192,
        };
        assert!(u.is_capped_at(4096, 4096));
        assert!(!u.is_capped_at(8192, 4096));
    }

    #[test]
    fn other_snapshotters_and_templated_options_are_refused() {
        let bind = Mount {
            r#type: "bind".into(),
            ..overlay(&["rbind", "rw"])
        };
        assert!(
            capped(vec![bind], 1 << 20, 4096)
                .unwrap_err()
                .contains("bind")
        );
        assert!(capped(vec![], 1 << 20, 4096).is_err());
        let odd = overlay(&["lowerdir=/a{{ mount 3 }}", "upperdir=/u", "workdir=/w"]);
        assert!(capped(vec![odd], 1 << 20, 4096).is_err());
    }
}
