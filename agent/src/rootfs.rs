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

use chrono::{DateTime, Utc};
use fast_sandbox_api::agent::ErrorCode;
use fast_sandbox_api::files::{FileInfo, FileType};
use rustix::fs::{
    AtFlags, Dir, Gid, Mode, OFlags, ResolveFlags, Stat, Uid, fchmod, fchown, fstat, mkdirat,
    openat2, readlinkat, statat, unlinkat,
};
use rustix::io::Errno;

use crate::api::invalid;
use crate::error::{Error, Result};

mod path;
mod upload;

pub use path::SandboxPath;
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

/// The host id root is in the user namespace of the process whose `/proc`
/// directory is `dir`, from its `map` file (`uid_map`, `gid_map`); 0 when
/// unreadable (the process is gone: nothing is created then anyway).
fn host_root_of(dir: &OwnedFd, map: &str) -> u32 {
    rustix::fs::openat(dir, map, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .ok()
        .and_then(|f| std::io::read_to_string(File::from(f)).ok())
        .and_then(|t| crate::userns::host_root(&t))
        .unwrap_or(0)
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

fn uid_gid(status: &str) -> (u32, u32) {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Uid:"), field("Gid:"))
}

fn proc_gone(proc_root: &Path, pid: u32) -> impl Fn(Errno) -> Error {
    let proc_dir = proc_root.join(pid.to_string());
    move |e: Errno| {
        Error::SandboxNotRunning(format!(
            "the sandbox's process ({}) is gone: {}",
            proc_dir.display(),
            std::io::Error::from(e)
        ))
    }
}

/// Opens `/proc/<pid>` under `proc_root` (the host's `/proc`) after checking
/// through it that the process is still the sandbox's: one of its cgroup
/// paths ends with `cgroup_suffix`, so a reused PID is never taken for it.
/// Everything opened through the returned directory is that process's, or
/// fails once it is gone.
pub fn process_dir(proc_root: &Path, pid: u32, cgroup_suffix: &str) -> Result<OwnedFd> {
    let gone = proc_gone(proc_root, pid);
    let dir = rustix::fs::open(
        proc_root.join(pid.to_string()),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(&gone)?;
    let fd = rustix::fs::openat(
        &dir,
        "cgroup",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(&gone)?;
    let cgroup = std::io::read_to_string(File::from(fd))
        .map_err(|e| Error::io(format!("reading {}/{pid}/cgroup", proc_root.display()), e))?;
    if !cgroup.lines().any(|l| l.ends_with(cgroup_suffix)) {
        return Err(Error::SandboxNotRunning(format!(
            "process {pid} is no longer the sandbox's"
        )));
    }
    Ok(dir)
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
    /// naming it (a FIFO or device would never end).
    pub fn open_read(&self, path: &SandboxPath) -> Result<File> {
        let fd = self.open_path(path, OFlags::RDONLY | OFlags::NONBLOCK)?;
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
        rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(file_err("read", &path.display))?;
        Ok(File::from(fd))
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

/// Sets the owner of what the agent creates to the sandbox's user.
pub(crate) fn chown(fd: impl AsFd, (uid, gid): (u32, u32)) -> rustix::io::Result<()> {
    fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
}

/// The kind of a stat mode.
pub(crate) fn file_type(st: &Stat) -> FileType {
    match rustix::fs::FileType::from_raw_mode(st.st_mode) {
        rustix::fs::FileType::RegularFile => FileType::File,
        rustix::fs::FileType::Directory => FileType::Directory,
        rustix::fs::FileType::Symlink => FileType::Symlink,
        _ => FileType::Other,
    }
}

/// Modification time of a stat.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn mtime(st: &Stat) -> DateTime<Utc> {
    DateTime::from_timestamp(st.st_mtime as i64, st.st_mtime_nsec as u32).unwrap_or_default()
}

/// The [`FileInfo`] of `name` in `dir`, stat'ed as `st`.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn info(dir: impl AsFd, name: &str, path: &str, st: &Stat) -> FileInfo {
    let file_type = file_type(st);
    let link_target = (file_type == FileType::Symlink)
        .then(|| readlinkat(dir, name, Vec::new()).ok())
        .flatten()
        .map(|t| String::from_utf8_lossy(t.as_bytes()).into_owned());
    FileInfo {
        name: if path == "/" {
            "/".into()
        } else {
            name.to_string()
        },
        path: path.to_string(),
        file_type,
        size: st.st_size as u64,
        mode: (st.st_mode as u32) & 0o7777,
        modified_at: mtime(st),
        link_target,
    }
}

/// Most entries of one directory the files API lists, archives or removes:
/// the names are held in memory to be sorted (and a listing's answer
/// whole), so a tenant's directory of millions must not take the agent's
/// memory.
pub const MAX_DIR_ENTRIES: usize = 100_000;

/// The names in an open directory, sorted, without `.` and `..`; at most
/// [`MAX_DIR_ENTRIES`].
pub(crate) fn names(dir: impl AsFd, path: &str) -> Result<Vec<String>> {
    let entries = Dir::read_from(dir).map_err(file_err("list", path))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(file_err("list", path))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if names.len() == MAX_DIR_ENTRIES {
            return Err(Error::File {
                op: "list",
                path: path.to_string(),
                code: fast_sandbox_api::agent::ErrorCode::InvalidArgument,
                message: format!(
                    "the directory holds more than {MAX_DIR_ENTRIES} entries, more than the files API lists, archives or removes at once; use exec (ls, tar, rm) for it"
                ),
            });
        }
        // Names that are not UTF-8 cannot be named on this API.
        if let Ok(n) = std::str::from_utf8(name) {
            names.push(n.to_string());
        }
    }
    names.sort();
    Ok(names)
}

fn list_dir(dir: &OwnedFd, path: &SandboxPath) -> Result<Vec<FileInfo>> {
    let mut out = Vec::new();
    for name in names(dir, &path.display)? {
        let child = path.child(&name);
        match statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => out.push(info(dir, &name, &child.display, &st)),
            // Removed since it was listed.
            Err(Errno::NOENT) => {}
            Err(e) => return Err(file_err("stat", &child.display)(e)),
        }
    }
    Ok(out)
}

/// Opens directory `name` below `dir` without following anything.
pub(crate) fn open_child_dir(dir: impl AsFd, name: &str, path: &str) -> Result<OwnedFd> {
    openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        BENEATH,
    )
    .map_err(file_err("open", path))
}

fn remove_tree(parent: &OwnedFd, name: &str, path: &SandboxPath, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(invalid(
            "path",
            format!("{} is nested deeper than {MAX_DEPTH} levels", path.display),
        ));
    }
    let dir = open_child_dir(parent, name, &path.display)?;
    for child in names(&dir, &path.display)? {
        let child_path = path.child(&child);
        let st = match statat(&dir, child.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(file_err("remove", &child_path.display)(e)),
        };
        if file_type(&st) == FileType::Directory {
            remove_tree(&dir, &child, &child_path, depth + 1)?;
        } else {
            match unlinkat(&dir, child.as_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(file_err("remove", &child_path.display)(e)),
            }
        }
    }
    unlinkat(parent, name, AtFlags::REMOVEDIR).map_err(file_err("remove", &path.display))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fast_sandbox_api::agent::ErrorCode;

    fn root() -> (tempfile::TempDir, SandboxRoot, std::path::PathBuf) {
        let outside = tempfile::tempdir().unwrap();
        let dir = outside.path().join("root");
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/hostname"), "inside\n").unwrap();
        std::fs::write(outside.path().join("secret"), "host secret\n").unwrap();
        let r = SandboxRoot::at(&dir, (0, 0)).unwrap();
        (outside, r, dir)
    }

    fn p(s: &str) -> SandboxPath {
        SandboxPath::parse(s).unwrap()
    }

    fn read(r: &SandboxRoot, path: &str) -> Result<String> {
        let f = r.open_read(&p(path))?;
        Ok(std::io::read_to_string(f).unwrap())
    }

    #[test]
    fn symlinks_resolve_inside_the_root_and_never_reach_outside() {
        let (outside, r, dir) = root();
        let secret = outside.path().join("secret");
        std::os::unix::fs::symlink(&secret, dir.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../secret", dir.join("rel")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("host")).unwrap();
        std::os::unix::fs::symlink("../..", dir.join("etc/up")).unwrap();
        // An absolute link resolves in the root: the host path is not there.
        let e = read(&r, "/abs").unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
        // `..` in a link stops at the root.
        assert_eq!(read(&r, "/rel").unwrap_err().code(), ErrorCode::NotFound);
        assert_eq!(read(&r, "/host").unwrap(), "inside\n");
        assert_eq!(read(&r, "/etc/up/etc/hostname").unwrap(), "inside\n");
        // `..` in the request is refused outright.
        assert!(SandboxPath::parse("/etc/../../secret").is_err());
        // stat does not follow the final link.
        let st = r.stat(&p("/abs")).unwrap();
        assert_eq!(st.file_type, FileType::Symlink);
        assert_eq!(st.link_target.as_deref(), Some(secret.to_str().unwrap()));
        // Writing through a link to a directory outside lands inside.
        std::os::unix::fs::symlink(outside.path(), dir.join("out")).unwrap();
        let e = r.create(&p("/out/secret"), 0o644).unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "host secret\n");
    }

    #[test]
    fn magic_links_and_other_mounts_are_refused() {
        let (_outside, r, dir) = root();
        std::os::unix::fs::symlink("/proc/self/root", dir.join("magic")).unwrap();
        // The root has no /proc of its own here: the link resolves inside.
        assert_eq!(
            r.list(&p("/magic")).unwrap_err().code(),
            ErrorCode::NotFound
        );
        // The host's /proc through an absolute link to a real mount point
        // cannot be reached either: links resolve inside the root.
        let host = SandboxRoot::at(Path::new("/"), (0, 0)).unwrap();
        let e = host.list(&p("/proc/self/root")).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
    }

    #[test]
    fn write_mkdir_list_stat_remove() {
        let (_outside, r, dir) = root();
        let mut up = r.create(&p("/etc/new"), 0o640).unwrap();
        up.write(b"hello").unwrap();
        let info = up.commit().unwrap();
        assert_eq!(
            (info.size, info.mode, info.file_type),
            (5, 0o640, FileType::File)
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("etc/new")).unwrap(),
            "hello"
        );
        // Overwrite, and an abandoned upload leaves nothing.
        let mut up = r.create(&p("/etc/new"), 0o600).unwrap();
        up.write(b"again").unwrap();
        drop(up);
        assert_eq!(
            std::fs::read_to_string(dir.join("etc/new")).unwrap(),
            "hello"
        );
        assert_eq!(
            r.list(&p("/etc"))
                .unwrap()
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>(),
            ["hostname", "new"]
        );
        let e = r.create(&p("/nope/x"), 0o644).unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound);
        assert!(e.to_string().contains("/nope"), "{e}");
        assert_eq!(
            r.create(&p("/etc"), 0o644).unwrap_err().code(),
            ErrorCode::IsADirectory
        );
        assert_eq!(
            read(&r, "/etc").unwrap_err().code(),
            ErrorCode::IsADirectory
        );

        let made = r.mkdir_all(&p("/a/b/c"), 0o750).unwrap();
        assert_eq!((made.file_type, made.mode), (FileType::Directory, 0o750));
        r.mkdir_all(&p("/a/b/c"), 0o750).unwrap();
        assert_eq!(
            r.mkdir_all(&p("/etc/new/x"), 0o755).unwrap_err().code(),
            ErrorCode::AlreadyExists
        );
        std::fs::write(dir.join("a/b/c/f"), "x").unwrap();
        assert_eq!(
            r.remove(&p("/a"), false).unwrap_err().code(),
            ErrorCode::DirectoryNotEmpty
        );
        assert_eq!(
            r.remove(&p("/a"), true).unwrap().file_type,
            FileType::Directory
        );
        assert!(!dir.join("a").exists());
        assert_eq!(
            r.remove(&p("/a"), true).unwrap_err().code(),
            ErrorCode::NotFound
        );
        assert_eq!(
            r.remove(&p("/"), true).unwrap_err().code(),
            ErrorCode::InvalidArgument
        );
        assert_eq!(r.stat(&p("/")).unwrap().file_type, FileType::Directory);
    }

    #[test]
    fn a_directory_past_the_entry_limit_is_refused_not_held_in_memory() {
        let (_outside, r, dir) = root();
        let big = dir.join("big");
        std::fs::create_dir(&big).unwrap();
        for i in 0..MAX_DIR_ENTRIES {
            std::os::unix::fs::symlink("x", big.join(i.to_string())).unwrap();
        }
        assert_eq!(r.list(&p("/big")).unwrap().len(), MAX_DIR_ENTRIES);
        std::os::unix::fs::symlink("x", big.join("one-more")).unwrap();
        let e = r.list(&p("/big")).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
        assert!(e.to_string().contains("/big"), "{e}");
        assert!(e.to_string().contains("use exec"), "{e}");
        let e = r.remove(&p("/big"), true).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
    }

    #[test]
    fn status_gives_the_real_ids() {
        assert_eq!(
            uid_gid("Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGid:\t5\t5\t5\t5\n"),
            (1000, 5)
        );
    }
}
