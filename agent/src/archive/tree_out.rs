//! Writing a tree inside a sandbox as a tar stream: each step one name
//! opened without following anything and without leaving the root file
//! system; symlinks stored as symlinks; ids as the sandbox sees them.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use fast_sandbox_api::files::FileType;
use rustix::fs::{AtFlags, Mode, OFlags, fstat, openat2, readlinkat, statat};
use rustix::io::Errno;
use tar::{EntryType, Header};

use crate::api::invalid;
use crate::error::{Error, Result};
use crate::rootfs::{
    self, BENEATH, MAX_DEPTH, SandboxPath, SandboxRoot, file_err, file_type, open_child_dir,
};

fn tar_err(path: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(format!("writing the tar stream of {path}"), e)
}

/// Most names of directory listings held at once while a tree is walked
/// (each listing on the way down stays until its directory is done): each
/// directory has its own bound, but one nested in another nested in
/// another would add up to millions.
const MAX_HELD_NAMES: usize = 200_000;

/// The stream being written, the node's ids of the sandbox's root, and
/// the names listed and not yet archived.
struct Out<W: Write> {
    tar: tar::Builder<W>,
    owner: (u32, u32),
    held: usize,
    max_held: usize,
}

/// Writes the tree at `path` as an uncompressed tar stream into `out`.
pub fn write_tree(root: &SandboxRoot, path: &SandboxPath, out: impl Write) -> Result<()> {
    write_bounded(root, path, out, MAX_HELD_NAMES)
}

fn write_bounded(
    root: &SandboxRoot,
    path: &SandboxPath,
    out: impl Write,
    max_held: usize,
) -> Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Complete);
    let mut out = Out {
        tar,
        owner: root.owner(),
        held: 0,
        max_held,
    };
    let (dir, name, entry_name) = if path.is_root() {
        let fd = root.open_path(path, OFlags::PATH | OFlags::DIRECTORY)?;
        (fd, ".".to_string(), ".".to_string())
    } else {
        let parent_path = path.parent().unwrap_or_else(|| path.clone());
        let fd = root.open_path(&parent_path, OFlags::PATH | OFlags::DIRECTORY)?;
        (fd, path.name().to_string(), path.name().to_string())
    };
    let st = statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(file_err("stat", &path.display))?;
    append(&mut out, &dir, &name, &entry_name, path, &st, 0)?;
    out.tar
        .into_inner()
        .map_err(tar_err(&path.display))?
        .flush()
        .map_err(tar_err(&path.display))
}

/// An id as the sandbox sees it, from the node's: in a user namespace
/// whose root is `root` on the node, ids are offset by it, and one outside
/// its range is the overflow id (65534), as `stat` inside shows it. Archives
/// carry the sandbox's ids, never the node's mapping.
fn inside_id(host: u32, root: u32) -> u32 {
    if root == 0 {
        host
    } else if (root..root.saturating_add(crate::userns::IDS_PER_SANDBOX)).contains(&host) {
        host - root
    } else {
        65534
    }
}

#[allow(clippy::unnecessary_cast)]
fn header(st: &rustix::fs::Stat, kind: EntryType, owner: (u32, u32)) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode((st.st_mode as u32) & 0o7777);
    h.set_uid(u64::from(inside_id(st.st_uid as u32, owner.0)));
    h.set_gid(u64::from(inside_id(st.st_gid as u32, owner.1)));
    h.set_mtime(u64::try_from(st.st_mtime as i64).unwrap_or(0));
    h.set_size(0);
    h
}

fn append<W: Write>(
    out: &mut Out<W>,
    dir: &OwnedFd,
    name: &str,
    entry: &str,
    path: &SandboxPath,
    st: &rustix::fs::Stat,
    depth: usize,
) -> Result<()> {
    let write = tar_err(&path.display);
    match file_type(st) {
        FileType::Symlink => {
            let target =
                readlinkat(dir, name, Vec::new()).map_err(file_err("readlink", &path.display))?;
            let target = String::from_utf8_lossy(target.as_bytes()).into_owned();
            let mut h = header(st, EntryType::Symlink, out.owner);
            out.tar.append_link(&mut h, entry, &target).map_err(write)?;
        }
        FileType::File => {
            let fd = openat2(
                dir,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                BENEATH,
            )
            .map_err(file_err("open", &path.display))?;
            // Swapped for something else since the walk's stat: left out.
            let now = fstat(&fd).map_err(file_err("stat", &path.display))?;
            if file_type(&now) != FileType::File {
                return Ok(());
            }
            let fd = rootfs::reopen_regular(&fd).map_err(file_err("open", &path.display))?;
            #[allow(clippy::unnecessary_cast)]
            let size = now.st_size as u64;
            let mut h = header(&now, EntryType::Regular, out.owner);
            h.set_size(size);
            // Exactly `size` bytes, even if the file changes meanwhile.
            let data = std::fs::File::from(fd)
                .take(size)
                .chain(std::io::repeat(0))
                .take(size);
            out.tar.append_data(&mut h, entry, data).map_err(write)?;
        }
        FileType::Directory => {
            let mut h = header(st, EntryType::Directory, out.owner);
            out.tar
                .append_data(&mut h, format!("{entry}/"), std::io::empty())
                .map_err(write)?;
            if depth >= MAX_DEPTH {
                return Err(invalid(
                    "path",
                    format!("{} is nested deeper than {MAX_DEPTH} levels", path.display),
                ));
            }
            let child_dir = match open_child_dir(dir, name, &path.display) {
                Ok(d) => d,
                // A mount point: its content is another file system.
                Err(Error::File {
                    code: fast_sandbox_api::agent::ErrorCode::InvalidArgument,
                    ..
                }) => return Ok(()),
                Err(e) => return Err(e),
            };
            let names = rootfs::names(&child_dir, &path.display)?;
            out.held += names.len();
            if out.held > out.max_held {
                return Err(invalid(
                    "path",
                    format!(
                        "{} has directories of many entries nested in one another: archiving it would hold more than {} names at once; copy its parts, or use exec with tar",
                        path.display, out.max_held
                    ),
                ));
            }
            let listed = names.len();
            for child in names {
                let child_path = path.child(&child);
                let st = match statat(&child_dir, child.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(file_err("stat", &child_path.display)(e)),
                };
                let child_entry = if entry == "." {
                    child.clone()
                } else {
                    format!("{entry}/{child}")
                };
                append(
                    out,
                    &child_dir,
                    &child,
                    &child_entry,
                    &child_path,
                    &st,
                    depth + 1,
                )?;
            }
            out.held -= listed;
        }
        FileType::Other => {
            tracing::debug!(path = %path.display, "not archiving a device, FIFO or socket");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archived_ids_are_the_sandboxs_not_the_nodes() {
        let root = 2_816_868_352;
        assert_eq!(inside_id(root, root), 0);
        assert_eq!(inside_id(root + 1000, root), 1000);
        assert_eq!(inside_id(root + 65536, root), 65534, "outside its range");
        assert_eq!(inside_id(0, root), 65534, "the node's root");
        assert_eq!(inside_id(1000, 0), 1000, "no user namespace");
    }

    #[test]
    fn listings_held_on_the_way_down_are_bounded_together() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        for dir in ["t", "t/a", "t/a/b"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            for i in 0..3 {
                std::fs::write(root.join(format!("{dir}/f{i}")), "").unwrap();
            }
        }
        let r = SandboxRoot::at(&root, (0, 0)).unwrap();
        let path = SandboxPath::parse("/t").unwrap();
        // Held on the way down to t/a/b: t's 4, a's 4 and b's 3 names.
        write_bounded(&r, &path, std::io::sink(), 11).unwrap();
        let e = write_bounded(&r, &path, std::io::sink(), 10).unwrap_err();
        assert!(e.to_string().contains("more than 10 names at once"), "{e}");
        // Siblings one after another do not add up: t (now 5 names) and
        // t/c's 7 are held once t/a and t/a/b are done.
        std::fs::create_dir(root.join("t/c")).unwrap();
        for i in 0..7 {
            std::fs::write(root.join(format!("t/c/g{i}")), "").unwrap();
        }
        write_bounded(&r, &path, std::io::sink(), 12).unwrap();
    }
}
