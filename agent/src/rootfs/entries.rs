//! Entries below an already resolved directory: their [`FileInfo`], the
//! sorted listing (at most [`MAX_DIR_ENTRIES`]), and opening or removing
//! a subtree one name at a time without following anything.

use std::os::fd::{AsFd, OwnedFd};

use chrono::{DateTime, Utc};
use fast_sandbox_api::files::{FileInfo, FileType};
use rustix::fs::{AtFlags, Dir, Mode, OFlags, Stat, openat2, readlinkat, statat, unlinkat};
use rustix::io::Errno;

use super::{BENEATH, MAX_DEPTH, SandboxPath, file_err};
use crate::api::invalid;
use crate::error::{Error, Result};

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

/// The entries of open directory `dir` at `path`, sorted by name; entries
/// removed since the listing are skipped.
pub(super) fn list_dir(dir: &OwnedFd, path: &SandboxPath) -> Result<Vec<FileInfo>> {
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

/// Removes directory `name` below `parent` and everything in it, at most
/// [`MAX_DEPTH`] levels deep.
pub(super) fn remove_tree(
    parent: &OwnedFd,
    name: &str,
    path: &SandboxPath,
    depth: usize,
) -> Result<()> {
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
