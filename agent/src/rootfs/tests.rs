//! Unit tests of file access inside a sandbox: a temporary directory
//! stands in for its root.

use fast_sandbox_api::agent::ErrorCode;

use std::os::unix::fs::OpenOptionsExt;

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

#[test]
fn a_fifo_is_refused_without_being_opened() {
    let (_outside, r, dir) = root();
    let fifo = dir.join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    // A writer's open waits for a reader: an agent that opened the FIFO
    // (as it would a device, as the node's root) would let it through
    // before seeing what it is, and the pipe would be gone by the time a
    // real reader came.
    let writer_path = fifo.clone();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(writer_path)
            .unwrap();
        std::io::Write::write_all(&mut w, b"first reader").map_err(|e| e.kind())
    });
    let tid = tid_rx.recv().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !waiting_in_open(tid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never waited in its open"
        );
        std::thread::yield_now();
    }
    let e = r.open_read(&p("/fifo")).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // A woken task is runnable at once, run yet or not.
    assert!(
        waiting_in_open(tid),
        "the agent's open let the writer through"
    );
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    assert_eq!(
        writer.join().unwrap(),
        Ok(()),
        "the writer met a reader before ours"
    );
    assert_eq!(std::io::read_to_string(reader).unwrap(), "first reader");
}

/// Whether thread `tid` of this process sleeps in an `openat`.
fn waiting_in_open(tid: i32) -> bool {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/self/task/{tid}/{f}"));
    let (Ok(syscall), Ok(stat)) = (read("syscall"), read("stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses.
    let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
    syscall.starts_with(&format!("{} ", libc::SYS_openat)) && state == Some("S")
}
