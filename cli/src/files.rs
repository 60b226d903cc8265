//! `kubectl sandbox cp`: files and directories in and out of a running
//! sandbox through the access API, like `kubectl cp` but with no tar (or
//! anything else) needed in the image: the agent reads and writes the
//! sandbox's root filesystem itself. Reading needs `get` on
//! `sandboxes/files`, writing `update` (and `create` to make directories).
//!
//! Directories travel as tar streams that this command makes and unpacks
//! itself. Downloads stream to disk; an upload is read into memory first
//! (the Kubernetes client sends whole bodies).

use std::path::{Path, PathBuf};

use fast_sandbox_api::files::{FileInfo, FileList, FileType};
use futures::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::access::{self, AccessError};

/// One side of a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local path.
    Local(PathBuf),
    /// `[namespace/]sandbox:/absolute/path`.
    Remote {
        /// Namespace, when the spec names one.
        namespace: Option<String>,
        /// Sandbox name.
        sandbox: String,
        /// Absolute path inside the sandbox.
        path: String,
    },
}

impl Location {
    /// Parses a `kubectl sandbox cp` argument: `sandbox:/path` and
    /// `namespace/sandbox:/path` are remote, anything else local (`./a:b`
    /// names a local file).
    pub fn parse(arg: &str) -> Result<Self, AccessError> {
        let local = || Ok(Location::Local(PathBuf::from(arg)));
        if arg.starts_with('.') || arg.starts_with('/') {
            return local();
        }
        let Some((who, path)) = arg.split_once(':') else {
            return local();
        };
        if !path.starts_with('/') {
            return Err(AccessError::Usage(format!(
                "{arg:?}: the path inside the sandbox must be absolute ({who}:/{path})"
            )));
        }
        let (namespace, sandbox) = match who.split_once('/') {
            Some((ns, sb)) => (Some(ns.to_string()), sb.to_string()),
            None => (None, who.to_string()),
        };
        if sandbox.is_empty() {
            return Err(AccessError::Usage(format!(
                "{arg:?}: no sandbox name before ':'"
            )));
        }
        Ok(Location::Remote {
            namespace,
            sandbox,
            path: path.to_string(),
        })
    }
}

/// A files request against sandbox `namespace/name`.
fn files_path(
    namespace: &str,
    name: &str,
    path: &str,
    op: &str,
    extra: &[(&str, String)],
) -> String {
    let mut q = vec![("path", path.to_string()), ("op", op.to_string())];
    q.extend(extra.iter().cloned());
    access::path(namespace, name, "files", &q)
}

fn request(
    method: http::Method,
    uri: String,
    body: Vec<u8>,
) -> Result<http::Request<Vec<u8>>, AccessError> {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .map_err(|e| AccessError::Kube(kube::Error::HttpError(e)))
}

async fn json<T: serde::de::DeserializeOwned>(
    client: &kube::Client,
    method: http::Method,
    uri: String,
    body: Vec<u8>,
) -> Result<T, AccessError> {
    let text = client
        .request_text(request(method, uri, body)?)
        .await
        .map_err(access::api_error)?;
    serde_json::from_str(&text)
        .map_err(|e| AccessError::Protocol(format!("unexpected answer: {e}")))
}

/// What `path` is in the sandbox, or `None` when nothing is there.
pub async fn stat(
    client: &kube::Client,
    ns: &str,
    name: &str,
    path: &str,
) -> Result<Option<FileInfo>, AccessError> {
    match json::<FileInfo>(
        client,
        http::Method::GET,
        files_path(ns, name, path, "stat", &[]),
        Vec::new(),
    )
    .await
    {
        Ok(i) => Ok(Some(i)),
        // A missing sandbox is an error of its own (the access server names
        // it `sandboxes.<group> "name" not found`), not a missing path.
        Err(AccessError::Api(m))
            if !m.starts_with("sandboxes.")
                && (m.contains("not found") || m.contains("No such file")) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The entries of directory `path` in the sandbox.
pub async fn list(
    client: &kube::Client,
    ns: &str,
    name: &str,
    path: &str,
) -> Result<FileList, AccessError> {
    json(
        client,
        http::Method::GET,
        files_path(ns, name, path, "list", &[]),
        Vec::new(),
    )
    .await
}

fn base_name(path: &str) -> String {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Where symlink `link` points inside the sandbox: its `target` taken
/// from the link's directory unless absolute, `.` and `..` resolved
/// lexically (never above the root).
fn link_destination(link: &str, target: &str) -> String {
    let base = if target.starts_with('/') {
        String::new()
    } else {
        link.trim_end_matches('/')
            .rsplit_once('/')
            .map(|(dir, _)| dir.to_string())
            .unwrap_or_default()
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in base.split('/').chain(target.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Hops through symlinks a copy follows before giving up, as the kernel
/// does (`ELOOP`).
const MAX_LINK_HOPS: usize = 40;

/// Follows `src` through symlinks to what it names, as `cp` follows the
/// link it is given: the path and what is there.
async fn dereference(
    client: &kube::Client,
    ns: &str,
    name: &str,
    src: &str,
    mut info: FileInfo,
) -> Result<(String, FileInfo), AccessError> {
    let mut path = src.to_string();
    for _ in 0..MAX_LINK_HOPS {
        if info.file_type != FileType::Symlink {
            return Ok((path, info));
        }
        let target = info.link_target.clone().unwrap_or_default();
        let next = link_destination(&path, &target);
        info = stat(client, ns, name, &next).await?.ok_or_else(|| {
            AccessError::Api(format!(
                "{src}: a symlink to {target}, which does not exist in sandbox {name}"
            ))
        })?;
        path = next;
    }
    Err(AccessError::Api(format!(
        "{src}: more than {MAX_LINK_HOPS} symlinks in a row in sandbox {name}"
    )))
}

fn join_remote(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

#[cfg(unix)]
fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

/// A tar of local `dir`'s contents (entries relative to it), symlinks kept.
/// The tree at `dir` as a tar stream: directories, files and symlinks (as
/// symlinks). FIFOs, sockets and devices are left out, as copies out of a
/// sandbox leave them out: the sandbox refuses them, and one met half-way
/// would stop the copy with part of the tree written.
fn tar_dir(dir: &Path) -> Result<Vec<u8>, AccessError> {
    let read = |p: &Path| {
        let what = p.display().to_string();
        move |source| AccessError::Read { what, source }
    };
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir(".", dir).map_err(read(dir))?;
    let mut todo = vec![(dir.to_path_buf(), PathBuf::from("."))];
    while let Some((src, rel)) = todo.pop() {
        for entry in std::fs::read_dir(&src).map_err(read(&src))? {
            let entry = entry.map_err(read(&src))?;
            let path = entry.path();
            let name = rel.join(entry.file_name());
            let kind = entry.file_type().map_err(read(&path))?;
            if kind.is_dir() {
                b.append_dir(&name, &path).map_err(read(&path))?;
                todo.push((path, name));
            } else if kind.is_file() || kind.is_symlink() {
                b.append_path_with_name(&path, &name).map_err(read(&path))?;
            }
        }
    }
    b.into_inner().map_err(read(dir))
}

/// Copies local `src` into the sandbox at `dst`. A directory lands at
/// `dst` if `dst` does not exist, else inside it (as `cp -r`); so does a
/// file.
pub async fn upload(
    client: &kube::Client,
    ns: &str,
    name: &str,
    src: &Path,
    dst: &str,
) -> Result<(), AccessError> {
    // A symlink given as the source is copied as what it names, with that
    // one's mode (as `cp` does); symlinks inside a tree stay symlinks.
    let meta = tokio::fs::metadata(src)
        .await
        .map_err(|source| AccessError::Read {
            what: src.display().to_string(),
            source,
        })?;
    let local_name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let existing = stat(client, ns, name, dst).await?;
    let into_dir = existing
        .as_ref()
        .is_some_and(|i| i.file_type == FileType::Directory);
    let target = if into_dir && !local_name.is_empty() {
        join_remote(dst, &local_name)
    } else {
        dst.to_string()
    };
    if meta.is_dir() {
        let src = src.to_path_buf();
        let archive = tokio::task::spawn_blocking(move || tar_dir(&src))
            .await
            .map_err(|e| AccessError::Protocol(e.to_string()))??;
        let mode = format!("{:o}", mode_of(&meta));
        json::<FileInfo>(
            client,
            http::Method::POST,
            files_path(ns, name, &target, "mkdir", &[("mode", mode)]),
            Vec::new(),
        )
        .await?;
        json::<FileInfo>(
            client,
            http::Method::PUT,
            files_path(ns, name, &target, "untar", &[]),
            archive,
        )
        .await?;
        return Ok(());
    }
    let data = tokio::fs::read(src)
        .await
        .map_err(|source| AccessError::Read {
            what: src.display().to_string(),
            source,
        })?;
    let mode = format!("{:o}", mode_of(&meta));
    json::<FileInfo>(
        client,
        http::Method::PUT,
        files_path(ns, name, &target, "write", &[("mode", mode)]),
        data,
    )
    .await?;
    Ok(())
}

/// Copies `src` out of the sandbox to local `dst`, streaming: a file to
/// `dst` (inside it if it is a directory), a directory as a tree at `dst`
/// (inside it if it exists).
pub async fn download(
    client: &kube::Client,
    ns: &str,
    name: &str,
    src: &str,
    dst: &Path,
) -> Result<(), AccessError> {
    let info = stat(client, ns, name, src).await?.ok_or_else(|| {
        AccessError::Api(format!(
            "{src}: no such file or directory in sandbox {name}"
        ))
    })?;
    // A symlink is copied as what it names (file or tree, with that one's
    // mode), under the link's own name.
    let (resolved, info) = dereference(client, ns, name, src, info).await?;
    let local_is_dir = tokio::fs::metadata(dst)
        .await
        .map(|m| m.is_dir())
        .unwrap_or(false);
    let write_err = |p: &Path| {
        let what = p.display().to_string();
        move |source| AccessError::Write { what, source }
    };
    if info.file_type == FileType::Directory {
        let uri = files_path(ns, name, &resolved, "tar", &[]);
        let reader = client
            .request_stream(request(http::Method::GET, uri, Vec::new())?)
            .await
            .map_err(access::api_error)?;
        // Entries come under the directory's own name, which is dropped:
        // they land in `dst`/<src's name> when `dst` exists, else in a new
        // `dst`.
        let into = if local_is_dir {
            dst.join(base_name(src))
        } else {
            dst.to_path_buf()
        };
        let strip = true;
        tokio::fs::create_dir_all(&into)
            .await
            .map_err(write_err(&into))?;
        let sync = tokio_util::io::SyncIoBridge::new(reader.compat());
        return tokio::task::spawn_blocking(move || unpack(sync, &into, strip))
            .await
            .map_err(|e| AccessError::Protocol(e.to_string()))?;
    }
    let target = if local_is_dir {
        dst.join(base_name(src))
    } else {
        dst.to_path_buf()
    };
    let uri = files_path(ns, name, &resolved, "read", &[]);
    let reader = client
        .request_stream(request(http::Method::GET, uri, Vec::new())?)
        .await
        .map_err(access::api_error)?;
    let mut reader = std::pin::pin!(reader);
    let mut file = tokio::fs::File::create(&target)
        .await
        .map_err(write_err(&target))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| AccessError::Protocol(format!("the download broke: {e}")))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .await
            .map_err(write_err(&target))?;
    }
    file.flush().await.map_err(write_err(&target))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = local_mode(info.mode, false, umask());
        let _ = tokio::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).await;
    }
    Ok(())
}

/// Where entry `rel` lands under `into`, refusing any that would leave it:
/// an absolute path, a `..`, or a path through a symlink (an archive may
/// hold `link -> /etc` and then `link/passwd`).
fn destination(into: &Path, rel: &Path) -> Result<PathBuf, AccessError> {
    use std::path::Component;
    let refuse = || {
        AccessError::Protocol(format!(
            "the archive holds {}, which would land outside {}",
            rel.display(),
            into.display()
        ))
    };
    let mut dest = into.to_path_buf();
    let parts: Vec<Component<'_>> = rel.components().collect();
    for (i, c) in parts.iter().enumerate() {
        match c {
            Component::Normal(n) => dest.push(n),
            Component::CurDir => continue,
            _ => return Err(refuse()),
        }
        let last = i + 1 == parts.len();
        if !last && std::fs::symlink_metadata(&dest).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(refuse());
        }
    }
    Ok(dest)
}

/// Unpacks a tar stream under `into`, dropping the first path component
/// when `strip`; every entry stays under `into`.
fn unpack(reader: impl std::io::Read, into: &Path, strip: bool) -> Result<(), AccessError> {
    let mut archive = tar::Archive::new(reader);
    // Modes as `cp` makes them: no setuid, setgid or sticky bit from the
    // sandbox, and the user's umask applied.
    let mask = umask();
    archive.set_preserve_permissions(false);
    archive.set_mask(mask);
    let broken =
        |e: std::io::Error| AccessError::Protocol(format!("the tar stream is unreadable: {e}"));
    for entry in archive.entries().map_err(broken)? {
        let mut entry = entry.map_err(broken)?;
        let path = entry.path().map_err(broken)?.into_owned();
        let rel: PathBuf = if strip {
            path.components().skip(1).collect()
        } else {
            path
        };
        if rel.as_os_str().is_empty() || rel == Path::new(".") {
            continue;
        }
        let dest = destination(into, &rel)?;
        let write_err = |source| AccessError::Write {
            what: dest.display().to_string(),
            source,
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(write_err)?;
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Symlink => {
                entry.unpack(&dest).map_err(write_err)?;
            }
            tar::EntryType::Directory => {
                entry.unpack(&dest).map_err(write_err)?;
                // Always the user's to write into and remove: a sandbox's
                // 0500 directory would stop the copy of what is inside it.
                let mode = local_mode(entry.header().mode().unwrap_or(0o755), true, mask);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
                        .map_err(write_err)?;
                }
            }
            other => {
                return Err(AccessError::Protocol(format!(
                    "the archive holds {} as a {other:?} entry; only files, directories and symlinks are copied",
                    rel.display()
                )));
            }
        }
    }
    Ok(())
}

/// The mode a file (or directory, always the user's to write into) copied
/// out of a sandbox gets here: its permission bits, without setuid, setgid
/// or sticky, under the user's umask `mask`.
fn local_mode(remote: u32, dir: bool, mask: u32) -> u32 {
    let mode = if dir { remote | 0o700 } else { remote };
    mode & 0o777 & !mask
}

/// This process's umask, read without changing it (`umask(2)` can only
/// set it); 022 where `/proc` does not say.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets_resolve_from_the_links_directory() {
        assert_eq!(link_destination("/tmp/d/l", "/etc/passwd"), "/etc/passwd");
        assert_eq!(link_destination("/tmp/d/l", "f"), "/tmp/d/f");
        assert_eq!(link_destination("/tmp/d/l", "../x/./y"), "/tmp/x/y");
        assert_eq!(link_destination("/l", "../../.."), "/");
        assert_eq!(link_destination("/bin/sh", "busybox"), "/bin/busybox");
    }

    #[test]
    fn remote_specs_parse() {
        assert_eq!(
            Location::parse("sb:/tmp/a").unwrap(),
            Location::Remote {
                namespace: None,
                sandbox: "sb".into(),
                path: "/tmp/a".into()
            }
        );
        assert_eq!(
            Location::parse("team/sb:/").unwrap(),
            Location::Remote {
                namespace: Some("team".into()),
                sandbox: "sb".into(),
                path: "/".into()
            }
        );
        assert_eq!(
            Location::parse("./a:b").unwrap(),
            Location::Local("./a:b".into())
        );
        assert_eq!(
            Location::parse("file.txt").unwrap(),
            Location::Local("file.txt".into())
        );
        assert!(Location::parse("sb:relative").is_err());
        assert!(Location::parse(":/x").is_err());
    }

    #[test]
    fn a_directory_tars_and_unpacks_without_its_own_name() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("d")).unwrap();
        std::fs::write(src.path().join("d/f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", src.path().join("d/l")).unwrap();
        // A FIFO is left out, not sent to be refused half-way.
        let made = std::process::Command::new("mkfifo")
            .arg(src.path().join("d/pipe"))
            .status()
            .unwrap();
        assert!(made.success());
        let tar = tar_dir(src.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        unpack(&tar[..], out.path(), false).unwrap();
        assert_eq!(std::fs::read(out.path().join("d/f")).unwrap(), b"x");
        assert_eq!(
            std::fs::read_link(out.path().join("d/l")).unwrap(),
            Path::new("f")
        );
        assert!(!out.path().join("d/pipe").exists());
    }

    #[test]
    fn a_sandboxs_modes_are_tamed_and_odd_entries_refused() {
        let entry = |b: &mut tar::Builder<Vec<u8>>, name: &str, kind, mode, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, data).unwrap();
        };
        let mut b = tar::Builder::new(Vec::new());
        entry(&mut b, "ro/", tar::EntryType::Directory, 0o500, b"");
        entry(&mut b, "ro/suid", tar::EntryType::Regular, 0o4777, b"x");
        entry(&mut b, "open/", tar::EntryType::Directory, 0o1777, b"");
        let out = tempfile::tempdir().unwrap();
        unpack(&b.into_inner().unwrap()[..], out.path(), false).unwrap();
        let mode = |p: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(out.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        let mask = umask();
        assert_eq!(mode("ro"), 0o700 & !mask, "the user's to write into");
        assert_eq!(
            mode("ro/suid"),
            0o777 & !mask,
            "no setuid, the umask applied"
        );
        assert_eq!(mode("open"), 0o777 & !mask, "no sticky bit");

        for kind in [
            tar::EntryType::Char,
            tar::EntryType::Fifo,
            tar::EntryType::Link,
        ] {
            let mut b = tar::Builder::new(Vec::new());
            entry(&mut b, "odd", kind, 0o644, b"");
            let e = unpack(&b.into_inner().unwrap()[..], out.path(), false).unwrap_err();
            assert!(
                e.to_string()
                    .contains("only files, directories and symlinks"),
                "{e}"
            );
            assert!(!out.path().join("odd").exists());
        }
    }

    #[test]
    fn entries_never_leave_the_destination() {
        let out = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", out.path().join("link")).unwrap();
        assert!(destination(out.path(), Path::new("link/passwd")).is_err());
        assert!(destination(out.path(), Path::new("../x")).is_err());
        assert!(destination(out.path(), Path::new("/abs")).is_err());
        assert_eq!(
            destination(out.path(), Path::new("./a/b")).unwrap(),
            out.path().join("a/b")
        );
        // The symlink itself may be replaced (it is the last component).
        assert!(destination(out.path(), Path::new("link")).is_ok());
    }
}
