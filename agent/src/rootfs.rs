//! Files inside a running sandbox, reached by the agent without any tool in
//! the image and never outside the sandbox.
//!
//! The root is the sandbox init's root directory as the host's `/proc`
//! shows it (`<host proc>/<pid>/root`): the container's own mount tree, so
//! what is written lands in its writable layer. Every path is resolved from
//! that directory by the kernel with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`: `..` and symlinks (absolute
//! ones included) resolve as they would inside the sandbox and can never
//! climb above its root, `/proc/<pid>/root`-style magic links are refused,
//! and so is crossing into another mount (the sandbox's `/proc`, `/sys`,
//! `/dev`): only its root filesystem is reachable. Operations on the final
//! component use the `*at` calls on its parent, without following it
//! (stat is lstat). Below a resolved directory (tar, recursive remove) each
//! step is one name opened with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`.
//!
//! Everything here blocks: callers run it on blocking threads.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use fast_sandbox_api::agent::ErrorCode;
use fast_sandbox_api::files::{FileInfo, FileType};
use rustix::fs::{
    AtFlags, Gid, Mode, OFlags, ResolveFlags, Uid, fchmod, fchown, fstat, mkdirat, openat2, statat,
    unlinkat,
};
use rustix::io::Errno;

use crate::api::invalid;
use crate::error::{Error, Result};

use entries::{list_dir, remove_tree};
use process::{host_root_of, proc_gone, uid_gid};

mod entries;
mod path;
mod process;
#[cfg(test)]
mod tests;
mod upload;

pub use entries::MAX_DIR_ENTRIES;
pub(crate) use entries::{file_type, info, names, open_child_dir};
pub use path::SandboxPath;
pub use process::process_dir;
pub use upload::Upload;

/// How paths below the root resolve.
const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);
/// How one name below an already resolved directory is opened.
pub(crate) const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);
/// Deepest tree walked (tar, recursive remove).
pub(crate) const MAX_DEPTH: usize = 256;

/// The root directory of one running sandbox.
#[derive(Debug)]
pub struct SandboxRoot {
    root: OwnedFd,
    owner: (u32, u32),
    root_owner: (u32, u32),
}

/// Maps an errno of operation `op` on `path` to an error naming the path.
pub(crate) fn file_err<'a>(op: &'static str, path: &'a str) -> impl Fn(Errno) -> Error + 'a {
    move |e| {
        if e == Errno::XDEV {
            Error::File {
                op,
                path: path.to_string(),
                code: fast_sandbox_api::agent::ErrorCode::InvalidArgument,
                message: "the path leaves the sandbox's root filesystem (another mount, or outside the directory it must stay in)".into(),
            }
        } else {
            Error::file(op, path, e)
        }
    }
}

/// Filesystems a sandbox's root may be on: the snapshotter's overlay (or,
/// with another snapshotter, a disk filesystem) and tmpfs. The root is
/// whatever process 1's root is, and a process with `CAP_SYS_CHROOT` can
/// make it its own `/proc`, `/sys` or `/dev/pts`; the agent reads as host
/// root, so through such a root it would hand out what only the host may
/// read (kernel symbols, the physical memory map). A mount the sandbox
/// made itself (in a user namespace of its own: tmpfs, overlay) holds only
/// what it could already reach, and overlay reaches its layers with its
/// mounter's credentials.
fn is_data_filesystem(magic: i64) -> bool {
    const OVERLAYFS: i64 = 0x794c_7630;
    const TMPFS: i64 = 0x0102_1994;
    const EXT: i64 = 0xef53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683e;
    const ZFS: i64 = 0x2fc1_2fc1;
    const F2FS: i64 = 0xf2f5_2010;
    [OVERLAYFS, TMPFS, EXT, XFS, BTRFS, ZFS, F2FS].contains(&magic)
}

impl SandboxRoot {
    /// Opens the root of the process with host PID `pid` under `proc_root`
    /// (the host's `/proc`), once [`process_dir`] has checked it is still
    /// the sandbox's.
    pub fn open(proc_root: &Path, pid: u32, cgroup_suffix: &str) -> Result<Self> {
        let dir = process_dir(proc_root, pid, cgroup_suffix)?;
        let gone = proc_gone(proc_root, pid);
        let status = rustix::fs::openat(
            &dir,
            "status",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(&gone)?;
        let owner =
            uid_gid(&std::io::read_to_string(File::from(status)).map_err(|e| {
                Error::io(format!("reading {}/{pid}/status", proc_root.display()), e)
            })?);
        let root_owner = (host_root_of(&dir, "uid_map"), host_root_of(&dir, "gid_map"));
        // Following the magic link here is the point: it is the sandbox's root.
        let root = rustix::fs::openat(
            &dir,
            "root",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(&gone)?;
        let fs = rustix::fs::fstatfs(&root).map_err(&gone)?.f_type as i64;
        if !is_data_filesystem(fs) {
            return Err(Error::File {
                op: "open",
                path: "/".into(),
                code: ErrorCode::PermissionDenied,
                message: format!(
                    "the root of the sandbox's process 1 is on a filesystem of type {fs:#x}, not one a root filesystem is served from (overlay, a disk filesystem, tmpfs): a process that made /proc or /sys its root is served nothing"
                ),
            });
        }
        Ok(Self {
            root,
            owner,
            root_owner,
        })
    }

    /// The same root, creating files as the sandbox's root instead of its
    /// process's user (what runc creates, such as a missing working
    /// directory, is root's): host root, or the host id its user namespace
    /// maps root to.
    pub fn as_root(self) -> Self {
        Self {
            owner: self.root_owner,
            ..self
        }
    }

    /// Opens a root directory directly (tests: any directory stands in).
    pub fn at(dir: &Path, owner: (u32, u32)) -> Result<Self> {
        let root = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::file("open", dir.display().to_string(), e))?;
        Ok(Self {
            root,
            owner,
            root_owner: (0, 0),
        })
    }

    /// Gives the root directory itself to [`SandboxRoot::owner`].
    pub fn own_root(&self) -> Result<()> {
        let (uid, gid) = self.owner;
        rustix::fs::chownat(
            &self.root,
            "",
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::EMPTY_PATH,
        )
        .map_err(|e| Error::file("chown", "/", e))
    }

    /// The user and group of the sandbox's process: new files get them.
    pub fn owner(&self) -> (u32, u32) {
        self.owner
    }

    /// Opens `path` (symlinks followed, inside the root) with `flags`.
    pub fn open_path(&self, path: &SandboxPath, flags: OFlags) -> Result<OwnedFd> {
        // openat2 refuses O_PATH with any flag beyond these few.
        let extra = if flags.contains(OFlags::PATH) {
            OFlags::CLOEXEC
        } else {
            OFlags::CLOEXEC | OFlags::NOCTTY
        };
        openat2(
            &self.root,
            path.relative(),
            flags | extra,
            Mode::empty(),
            IN_ROOT,
        )
        .map_err(file_err("open", &path.display))
    }

    /// The parent directory of `path` (which must not be the root) and the
    /// final name.
    fn parent<'p>(&self, path: &'p SandboxPath, op: &'static str) -> Result<(OwnedFd, &'p str)> {
        let Some((parent, name)) = path.split() else {
            return Err(invalid(
                "path",
                format!("cannot {op} the sandbox's root directory"),
            ));
        };
        let fd = openat2(
            &self.root,
            parent.relative(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        )
        .map_err(file_err(op, &parent.display))?;
        Ok((fd, name))
    }

    /// lstat of `path`.
    pub fn stat(&self, path: &SandboxPath) -> Result<FileInfo> {
        match self.parent(path, "stat") {
            Ok((dir, name)) => {
                let st = statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(file_err("stat", &path.display))?;
                Ok(info(&dir, name, &path.display, &st))
            }
            Err(_) if path.is_root() => {
                let st = fstat(&self.root).map_err(file_err("stat", "/"))?;
                Ok(info(&self.root, ".", "/", &st))
            }
            Err(e) => Err(e),
        }
    }

    /// The entries of directory `path`, sorted by name.
    pub fn list(&self, path: &SandboxPath) -> Result<Vec<FileInfo>> {
        let dir = self.open_path(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        list_dir(&dir, path)
    }

    /// Opens regular file `path` for reading; anything else is an error
    /// naming it (a FIFO or device would never end) and is never opened.
    pub fn open_read(&self, path: &SandboxPath) -> Result<File> {
        let fd = self.open_path(path, OFlags::PATH)?;
        let st = fstat(&fd).map_err(file_err("stat", &path.display))?;
        match rustix::fs::FileType::from_raw_mode(st.st_mode) {
            rustix::fs::FileType::RegularFile => {}
            rustix::fs::FileType::Directory => {
                return Err(Error::file("read", &path.display, Errno::ISDIR));
            }
            _ => {
                return Err(Error::File {
                    op: "read",
                    path: path.display.clone(),
                    code: fast_sandbox_api::agent::ErrorCode::InvalidArgument,
                    message: "not a regular file".into(),
                });
            }
        }
        reopen_regular(&fd)
            .map(File::from)
            .map_err(file_err("read", &path.display))
    }

    /// Starts writing `path`: a new file next to it, renamed over it by
    /// [`Upload::commit`]. Its parent must exist.
    pub fn create(&self, path: &SandboxPath, mode: u32) -> Result<Upload> {
        let (dir, name) = self.parent(path, "write")?;
        if let Ok(st) = statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            && rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
        {
            return Err(Error::file("write", &path.display, Errno::ISDIR));
        }
        let tmp = temp_name(name);
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(file_err("write", &path.display))?;
        let upload = Upload {
            dir,
            tmp,
            name: name.to_string(),
            path: path.clone(),
            file: Some(File::from(fd)),
            mode,
            owner: self.owner,
        };
        Ok(upload)
    }

    /// `mkdir -p path` with `mode` for what it creates.
    pub fn mkdir_all(&self, path: &SandboxPath, mode: u32) -> Result<FileInfo> {
        let mut cur = SandboxPath::parse("/")?;
        for part in &path.parts {
            let next = cur.child(part);
            match self.open_path(&next, OFlags::PATH | OFlags::DIRECTORY) {
                Ok(_) => {}
                Err(Error::File {
                    code: fast_sandbox_api::agent::ErrorCode::NotFound,
                    ..
                }) => {
                    let parent = self.open_path(&cur, OFlags::PATH | OFlags::DIRECTORY)?;
                    match mkdirat(&parent, part.as_str(), Mode::from_raw_mode(mode)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(file_err("mkdir", &next.display)(e)),
                    }
                    let made = self.open_path(&next, OFlags::RDONLY | OFlags::DIRECTORY)?;
                    fchmod(&made, Mode::from_raw_mode(mode))
                        .map_err(file_err("chmod", &next.display))?;
                    chown(&made, self.owner).map_err(file_err("chown", &next.display))?;
                }
                Err(Error::File {
                    code: fast_sandbox_api::agent::ErrorCode::NotADirectory,
                    ..
                }) => return Err(Error::file("mkdir", &next.display, Errno::EXIST)),
                Err(e) => return Err(e),
            }
            cur = next;
        }
        self.stat(path)
    }

    /// Removes a file, symlink, empty directory or, with `recursive`, a tree.
    pub fn remove(&self, path: &SandboxPath, recursive: bool) -> Result<FileInfo> {
        let (dir, name) = self.parent(path, "remove")?;
        let st = statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(file_err("remove", &path.display))?;
        let removed = info(&dir, name, &path.display, &st);
        if removed.file_type == FileType::Directory {
            if recursive {
                remove_tree(&dir, name, path, 0)?;
            } else {
                unlinkat(&dir, name, AtFlags::REMOVEDIR)
                    .map_err(file_err("remove", &path.display))?;
            }
        } else {
            unlinkat(&dir, name, AtFlags::empty()).map_err(file_err("remove", &path.display))?;
        }
        Ok(removed)
    }
}

/// A name next to `name` for a file being written (hidden, unique).
pub(crate) fn temp_name(name: &str) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stem: String = name.chars().take(100).collect();
    format!(".{stem}.fast-sandbox-{}-{n}", std::process::id())
}

/// Opens for reading the regular file that `O_PATH` descriptor `fd` was
/// checked to be. Opening a name runs a device's or FIFO's `open` as the
/// node's root before its type can be seen (a watchdog starts counting, a
/// FIFO's writer is let through), and the name can be swapped after a stat;
/// the descriptor holds the inode that was checked.
pub(crate) fn reopen_regular(fd: &OwnedFd) -> rustix::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
}

/// Sets the owner of what the agent creates to the sandbox's user.
pub(crate) fn chown(fd: impl AsFd, (uid, gid): (u32, u32)) -> rustix::io::Result<()> {
    fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
}
