//! Tar streams of trees inside a sandbox, each way, for `cp -r`: no tar
//! (nor shell) is needed in the image.
//!
//! Writing (`tree_out`) walks the tree from a directory resolved inside the sandbox's
//! root, each step one name opened without following anything and without
//! leaving the root filesystem (a mount point is stored as an empty
//! directory). Symlinks are stored as symlinks. Entries are named under the
//! tree's base name, like `tar -C dirname -c basename`.
//!
//! Extracting resolves each entry's parent below the destination with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: an entry with an absolute path
//! or `..` is refused, and a symlink (one the archive made, or one that was
//! there) is never followed to place a later entry. Files are written to a
//! temporary name and renamed over their destination; modes and times are
//! kept, directories get theirs once everything inside them is written;
//! everything is owned by the sandbox's user. Devices and FIFOs are refused.
//! Long names and pax headers are read with a bound (see `long_names`).
//!
//! Everything here blocks: callers run it on blocking threads.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use fast_sandbox_api::files::{FileInfo, FileType, MAX_PATH_BYTES};
use rustix::fs::{
    AtFlags, Mode, OFlags, Timespec, Timestamps, fchmod, futimens, linkat, mkdirat, openat2,
    renameat, statat, symlinkat,
};
use rustix::io::Errno;
use tar::EntryType;

use crate::api::invalid;
use crate::error::{Error, Result};
use crate::rootfs::{
    BENEATH, MAX_DEPTH, SandboxPath, SandboxRoot, chown, file_err, file_type, open_child_dir,
    temp_name,
};
use long_names::LongNames;
pub use tree_out::write_tree;

mod long_names;
mod tree_out;

/// The checked components of an archive entry's path (`None`: the entry
/// names the destination itself).
fn entry_parts(path: &Path) -> Result<Option<Vec<String>>> {
    let bytes = path.as_os_str().len();
    if bytes > MAX_PATH_BYTES {
        let start: String = path.display().to_string().chars().take(64).collect();
        return Err(invalid(
            "body",
            format!("archive entry {start:?}... is {bytes} bytes long; at most {MAX_PATH_BYTES}"),
        ));
    }
    let shown = path.display().to_string();
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => match n.to_str() {
                Some(n) => parts.push(n.to_string()),
                None => {
                    return Err(invalid(
                        "body",
                        format!("archive entry {shown:?} is not UTF-8"),
                    ));
                }
            },
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(
                    "body",
                    format!("archive entry {shown:?} is an absolute path"),
                ));
            }
            Component::ParentDir => {
                return Err(invalid(
                    "body",
                    format!("archive entry {shown:?} contains '..'"),
                ));
            }
        }
    }
    if parts.len() > MAX_DEPTH {
        return Err(invalid(
            "body",
            format!("archive entry {shown:?} is nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    Ok((!parts.is_empty()).then_some(parts))
}

/// Opens the parent of entry `parts` below `dest`, following nothing and
/// creating missing directories (owned by `owner`), as tar does for
/// archives without directory entries.
fn entry_parent(
    dest: &OwnedFd,
    parts: &[String],
    shown: &str,
    owner: (u32, u32),
) -> Result<OwnedFd> {
    let refused = |e: Errno| match e {
        Errno::LOOP | Errno::XDEV | Errno::NOTDIR => invalid(
            "body",
            format!(
                "archive entry {shown:?} would be placed through a symlink, a file or outside the destination"
            ),
        ),
        e => Error::file("extract", shown, e),
    };
    let open = |dir: &OwnedFd, name: &str| {
        openat2(
            dir,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            BENEATH,
        )
    };
    let mut cur = open(dest, ".").map_err(refused)?;
    for part in &parts[..parts.len() - 1] {
        cur = match open(&cur, part) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                match mkdirat(&cur, part.as_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(refused(e)),
                }
                let made = open(&cur, part).map_err(refused)?;
                // The directory opened, not the name, which the sandbox
                // may have swapped since.
                rustix::fs::chownat(
                    &made,
                    "",
                    Some(rustix::fs::Uid::from_raw(owner.0)),
                    Some(rustix::fs::Gid::from_raw(owner.1)),
                    AtFlags::EMPTY_PATH,
                )
                .map_err(refused)?;
                made
            }
            Err(e) => return Err(refused(e)),
        };
    }
    Ok(cur)
}

/// Directories an extraction holds open to give them their modes and times
/// once everything inside is written. Each is a descriptor of the agent,
/// which every sandbox on it shares: past this many, a directory gets its
/// mode and time as it is made (entries written into it later move its
/// time), so a tree of many directories cannot use up the agent's
/// descriptors.
const MAX_HELD_DIRS: usize = 1024;

/// Gives an extracted directory its mode and time (best effort: the
/// sandbox may have changed it meanwhile).
fn finish_dir(fd: &OwnedFd, mode: u32, mtime: u64) {
    let _ = fchmod(fd, Mode::from_raw_mode(mode));
    let _ = futimens(fd.as_fd(), &times(mtime));
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(0),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Extracts the tar stream `input` into existing directory `dest`.
pub fn extract(root: &SandboxRoot, dest: &SandboxPath, input: impl Read) -> Result<FileInfo> {
    let dest_fd = root.open_path(dest, OFlags::RDONLY | OFlags::DIRECTORY)?;
    let owner = root.owner();
    let bad = |e: std::io::Error| invalid("body", format!("not a tar stream: {e}"));
    let mut archive = tar::Archive::new(input);
    // Directories get their modes last, deepest first, so a read-only
    // directory does not stop what goes inside it.
    let mut dirs: Vec<(OwnedFd, u32, u64)> = Vec::new();
    // Raw: long names and pax headers are read here, with a bound.
    let mut long_names = LongNames::default();
    for entry in archive.entries().map_err(bad)?.raw(true) {
        let mut entry = entry.map_err(bad)?;
        if long_names.absorb(&mut entry)? {
            continue;
        }
        let (entry_path, link_name) = long_names.take(&entry);
        let entry_path = PathBuf::from(OsString::from_vec(entry_path));
        let link_name = link_name.map(|l| PathBuf::from(OsString::from_vec(l)));
        let shown = format!(
            "{}/{}",
            dest.display.trim_end_matches('/'),
            entry_path.display()
        );
        let Some(parts) = entry_parts(&entry_path)? else {
            continue;
        };
        let name = parts[parts.len() - 1].clone();
        let parent = entry_parent(&dest_fd, &parts, &shown, owner)?;
        let bad_entry =
            |e: std::io::Error| invalid("body", format!("archive entry {shown:?}: {e}"));
        let h = entry.header();
        let mode = h.mode().map_err(bad_entry)? & 0o7777;
        let mtime = h.mtime().map_err(bad_entry)?;
        match h.entry_type() {
            EntryType::Regular | EntryType::Continuous => {
                let tmp = temp_name(&name);
                let fd = rustix::fs::openat(
                    &parent,
                    tmp.as_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(file_err("extract", &shown))?;
                let mut file = std::fs::File::from(fd);
                let size = entry.size();
                let copied = std::io::copy(&mut entry, &mut file);
                let done = copied
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::Other | std::io::ErrorKind::UnexpectedEof => {
                            bad_entry(e)
                        }
                        _ => Error::file(
                            "extract",
                            &shown,
                            Errno::from_io_error(&e).unwrap_or(Errno::IO),
                        ),
                    })
                    .and_then(|n| {
                        // The stream ended inside the file's data: the tar
                        // reader gives what there was without an error.
                        if n != size {
                            return Err(invalid(
                                "body",
                                format!(
                                    "archive entry {shown:?} ends after {n} of its {size} bytes"
                                ),
                            ));
                        }
                        // chown clears setuid and setgid bits: mode after owner.
                        chown(&file, owner).map_err(file_err("chown", &shown))?;
                        fchmod(&file, Mode::from_raw_mode(mode))
                            .map_err(file_err("chmod", &shown))?;
                        futimens(&file, &times(mtime)).map_err(file_err("utimes", &shown))?;
                        renameat(&parent, tmp.as_str(), &parent, name.as_str())
                            .map_err(file_err("extract", &shown))
                    });
                if done.is_err() {
                    let _ = rustix::fs::unlinkat(&parent, tmp.as_str(), AtFlags::empty());
                }
                done?;
            }
            EntryType::Directory => {
                match mkdirat(&parent, name.as_str(), Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        let st = statat(&parent, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(file_err("extract", &shown))?;
                        if file_type(&st) != FileType::Directory {
                            return Err(Error::file("extract", &shown, Errno::EXIST));
                        }
                    }
                    Err(e) => return Err(file_err("extract", &shown)(e)),
                }
                let fd = open_child_dir(&parent, &name, &shown)?;
                chown(&fd, owner).map_err(file_err("chown", &shown))?;
                if dirs.len() < MAX_HELD_DIRS {
                    dirs.push((fd, mode, mtime));
                } else {
                    finish_dir(&fd, mode, mtime);
                }
            }
            EntryType::Symlink => {
                let target = link_name
                    .ok_or_else(|| invalid("body", format!("symlink {shown:?} has no target")))?;
                let tmp = temp_name(&name);
                symlinkat(target.as_path(), &parent, tmp.as_str())
                    .map_err(file_err("extract", &shown))?;
                let placed = rustix::fs::chownat(
                    &parent,
                    tmp.as_str(),
                    Some(rustix::fs::Uid::from_raw(owner.0)),
                    Some(rustix::fs::Gid::from_raw(owner.1)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .and_then(|()| renameat(&parent, tmp.as_str(), &parent, name.as_str()));
                if let Err(e) = placed {
                    let _ = rustix::fs::unlinkat(&parent, tmp.as_str(), AtFlags::empty());
                    return Err(file_err("extract", &shown)(e));
                }
            }
            EntryType::Link => {
                let target = link_name
                    .ok_or_else(|| invalid("body", format!("hard link {shown:?} has no target")))?;
                let Some(target_parts) = entry_parts(&target)? else {
                    return Err(invalid(
                        "body",
                        format!("hard link {shown:?} names the destination"),
                    ));
                };
                let target_parent = entry_parent(&dest_fd, &target_parts, &shown, owner)?;
                let target_name = &target_parts[target_parts.len() - 1];
                let tmp = temp_name(&name);
                linkat(
                    &target_parent,
                    target_name.as_str(),
                    &parent,
                    tmp.as_str(),
                    AtFlags::empty(),
                )
                .map_err(file_err("extract", &shown))?;
                if let Err(e) = renameat(&parent, tmp.as_str(), &parent, name.as_str()) {
                    let _ = rustix::fs::unlinkat(&parent, tmp.as_str(), AtFlags::empty());
                    return Err(file_err("extract", &shown)(e));
                }
            }
            other => {
                return Err(invalid(
                    "body",
                    format!(
                        "archive entry {shown:?} is a {other:?}: devices, FIFOs and other special files are not extracted"
                    ),
                ));
            }
        }
    }
    if long_names.is_pending() {
        return Err(invalid(
            "body",
            "the archive ends with a long name or pax header that describes no member".into(),
        ));
    }
    for (fd, mode, mtime) in dirs.into_iter().rev() {
        finish_dir(&fd, mode, mtime);
    }
    root.stat(dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fast_sandbox_api::agent::ErrorCode;
    use std::os::unix::fs::PermissionsExt;

    fn tree() -> (tempfile::TempDir, SandboxRoot) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("src/sub")).unwrap();
        std::fs::create_dir_all(root.join("dst")).unwrap();
        std::fs::write(root.join("src/a.bin"), [0u8, 1, 2, 255]).unwrap();
        std::fs::set_permissions(
            root.join("src/a.bin"),
            std::fs::Permissions::from_mode(0o4751),
        )
        .unwrap();
        std::fs::write(root.join("src/sub/deep"), "deep").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("src/link")).unwrap();
        std::fs::set_permissions(root.join("src/sub"), std::fs::Permissions::from_mode(0o555))
            .unwrap();
        let r = SandboxRoot::at(&root, (0, 0)).unwrap();
        (t, r)
    }

    fn p(s: &str) -> SandboxPath {
        SandboxPath::parse(s).unwrap()
    }

    #[test]
    fn a_tree_goes_out_and_back_in_with_modes_and_links() {
        let (t, r) = tree();
        let mut out = Vec::new();
        write_tree(&r, &p("/src"), &mut out).unwrap();
        let names: Vec<String> = tar::Archive::new(&out[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            ["src/", "src/a.bin", "src/link", "src/sub/", "src/sub/deep"]
        );
        extract(&r, &p("/dst"), &out[..]).unwrap();
        let dst = t.path().join("root/dst/src");
        assert_eq!(std::fs::read(dst.join("a.bin")).unwrap(), [0u8, 1, 2, 255]);
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        // Setting the owner would clear a setuid bit set before it.
        assert_eq!(mode(&dst.join("a.bin")), 0o4751);
        assert_eq!(mode(&dst.join("sub")), 0o555);
        assert_eq!(
            std::fs::read_to_string(dst.join("sub/deep")).unwrap(),
            "deep"
        );
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        // A single file archives as one entry under its name.
        let mut one = Vec::new();
        write_tree(&r, &p("/src/a.bin"), &mut one).unwrap();
        assert_eq!(tar::Archive::new(&one[..]).entries().unwrap().count(), 1);
    }

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn raw_entry(
        b: &mut tar::Builder<Vec<u8>>,
        name: &[u8],
        kind: EntryType,
        link: Option<&str>,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        // Written raw: the tar crate refuses to build `..` and absolute names.
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn escapes_are_refused() {
        let (t, r) = tree();
        let outside = t.path().join("escaped");
        for (name, why) in [(&b"../../escaped"[..], "'..'"), (b"/escaped", "absolute")] {
            let a = archive(|b| raw_entry(b, name, EntryType::Regular, None, b"x"));
            let e = extract(&r, &p("/dst"), &a[..]).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
            assert!(e.to_string().contains(why), "{e}");
        }
        // A symlink in the archive, then an entry through it: refused.
        let a = archive(|b| {
            raw_entry(b, b"esc", EntryType::Symlink, Some("../.."), b"");
            raw_entry(b, b"esc/escaped", EntryType::Regular, None, b"x");
        });
        let e = extract(&r, &p("/dst"), &a[..]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
        // A symlink pointing outside is stored, and never followed by a
        // later file of the same name: the link itself is replaced.
        let a = archive(|b| {
            raw_entry(
                b,
                b"out",
                EntryType::Symlink,
                Some(outside.to_str().unwrap()),
                b"",
            );
            raw_entry(b, b"out", EntryType::Regular, None, b"inside");
        });
        extract(&r, &p("/dst"), &a[..]).unwrap();
        assert!(!outside.exists());
        assert_eq!(
            std::fs::read_to_string(t.path().join("root/dst/out")).unwrap(),
            "inside"
        );
        let a = archive(|b| raw_entry(b, b"dev", EntryType::Char, None, b""));
        assert_eq!(
            extract(&r, &p("/dst"), &a[..]).unwrap_err().code(),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            extract(&r, &p("/nope"), &a[..]).unwrap_err().code(),
            ErrorCode::NotFound
        );
    }

    #[test]
    fn names_no_path_could_have_are_refused_before_anything_is_made() {
        let (t, r) = tree();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        let long = format!("{}/f", "n".repeat(MAX_PATH_BYTES));
        b.append_data(&mut h, &long, &b"x"[..]).unwrap();
        let e = extract(&r, &p("/dst"), &b.into_inner().unwrap()[..]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
        assert!(e.to_string().contains("bytes long; at most 4096"), "{e}");
        assert!(e.to_string().len() < 300, "the name is cut short: {e}");

        let mut b = tar::Builder::new(Vec::new());
        let deep = format!("{}f", "d/".repeat(MAX_DEPTH));
        b.append_data(&mut h, &deep, &b"x"[..]).unwrap();
        let e = extract(&r, &p("/dst"), &b.into_inner().unwrap()[..]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
        assert!(e.to_string().contains("deeper than 256 levels"), "{e}");
        assert!(!t.path().join("root/dst/d").exists(), "no directory made");

        // Cut off inside a file's data: the error names the file.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(4096);
        h.set_mode(0o644);
        b.append_data(&mut h, "cut.bin", &[7u8; 4096][..]).unwrap();
        let whole = b.into_inner().unwrap();
        let e = extract(&r, &p("/dst"), &whole[..1024]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
        assert!(
            e.to_string()
                .contains("\"/dst/cut.bin\" ends after 512 of its 4096 bytes"),
            "{e}"
        );
        assert!(!t.path().join("root/dst/cut.bin").exists());
    }
}
