//! Unit tests of file access inside a sandbox: a temporary directory
//! stands in for its root.

use fast_sandbox_api::agent::ErrorCode;

use super::process::uid_gid;
use super::*;

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
