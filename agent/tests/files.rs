//! Files inside running sandboxes over the agent's API, against a real
//! containerd and runc: a binary round trip checked by hash (and found in
//! the sandbox's writable layer), modes, a directory copied both ways,
//! escapes through symlinks and `..` refused, a process 1 that made its
//! `/proc` its root served nothing, upload limits, archives whose long
//! names claim gigabytes or that hold more directories than the agent keeps
//! open, and the errors a user meets.

mod support;

use std::time::Duration;

use bytes::Bytes;
use fast_sandbox_agent::client::AgentClient;
use fast_sandbox_api::agent::{ContainerState, ErrorCode};
use fast_sandbox_api::files::FileType;
use http::StatusCode;
use support::{TestAgent, env, exec, request, stdout, tar_of, wait_for};

fn body(data: impl Into<Bytes>) -> fast_sandbox_agent::client::RequestBody {
    fast_sandbox_server::body::full(data.into())
}

fn sha256(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn read(
    c: &AgentClient,
    uid: &str,
    path: &str,
) -> Result<Vec<u8>, fast_sandbox_api::agent::ApiError> {
    match c.read_file(uid, path).await.unwrap() {
        Ok(s) => Ok(s.bytes().await.unwrap()),
        Err(e) => Err(e),
    }
}

async fn sandbox(a: &TestAgent, env: &support::Env, uid: &str) {
    a.client
        .create(&request(env, uid, &["sleep", "100000"]))
        .await
        .unwrap()
        .1
        .unwrap();
}

#[tokio::test]
async fn a_binary_file_round_trips_by_hash_into_the_writable_layer() {
    let env = env();
    let a = TestAgent::start(&env, "files-binary", 2).await;
    sandbox(&a, &env, "fb").await;
    let data: Vec<u8> = (0..(1u32 << 20) + 7)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let info = a
        .client
        .write_file("fb", "/tmp/blob.bin", Some(0o640), body(data.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (info.size, info.mode, info.file_type),
        (data.len() as u64, 0o640, FileType::File)
    );
    assert_eq!(info.path, "/tmp/blob.bin");
    let back = read(&a.client, "fb", "/tmp/blob.bin").await.unwrap();
    assert_eq!(sha256(&back), sha256(&data));
    // The sandbox sees the same bytes and mode.
    let inside = exec(
        &a.client,
        "fb",
        &[
            "sh",
            "-c",
            "sha256sum /tmp/blob.bin; stat -c %a /tmp/blob.bin",
        ],
    )
    .await;
    let out = stdout(&inside);
    assert!(out.starts_with(&sha256(&data)), "{out}");
    assert!(out.ends_with("640\n"), "{out}");
    // It is in the sandbox's writable layer (overlay upperdir), not anywhere else.
    let key = format!("fast-sandbox/{}/sandbox-fb", a.agent.config().pod_uid);
    let mounts = a.cd.snapshot_mounts(&key).await.unwrap();
    let upper = mounts
        .iter()
        .flat_map(|m| m.options.iter())
        .find_map(|o| o.strip_prefix("upperdir="))
        .unwrap_or_else(|| panic!("no upperdir in {mounts:?}"));
    let on_disk = std::fs::read(format!("{upper}/tmp/blob.bin")).unwrap();
    assert_eq!(sha256(&on_disk), sha256(&data));
    // Written by the sandbox, read through the API.
    exec(
        &a.client,
        "fb",
        &["sh", "-c", "printf 'from inside' > /tmp/in.txt"],
    )
    .await;
    assert_eq!(
        read(&a.client, "fb", "/tmp/in.txt").await.unwrap(),
        b"from inside"
    );
    // Overwriting replaces the content and takes the new mode (default 0644).
    let info = a
        .client
        .write_file("fb", "/tmp/in.txt", None, body("new"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((info.size, info.mode), (3, 0o644));
    assert_eq!(
        stdout(&exec(&a.client, "fb", &["cat", "/tmp/in.txt"]).await),
        "new"
    );
    a.client.delete("fb", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn stat_list_mkdir_and_remove() {
    let env = env();
    let a = TestAgent::start(&env, "files-ops", 2).await;
    sandbox(&a, &env, "fo").await;
    let c = &a.client;
    let made = c
        .mkdir("fo", "/data/a/b", Some(0o750))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((made.file_type, made.mode), (FileType::Directory, 0o750));
    c.write_file("fo", "/data/a/z.txt", None, body("z"))
        .await
        .unwrap()
        .unwrap();
    c.write_file("fo", "/data/a/y b+c.txt", Some(0o600), body("y"))
        .await
        .unwrap()
        .unwrap();
    exec(c, "fo", &["ln", "-s", "/etc/passwd", "/data/a/link"]).await;
    let list = c.list_dir("fo", "/data/a").await.unwrap().unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .map(|i| (i.name.as_str(), i.file_type))
        .collect();
    assert_eq!(
        names,
        [
            ("b", FileType::Directory),
            ("link", FileType::Symlink),
            ("y b+c.txt", FileType::File),
            ("z.txt", FileType::File)
        ]
    );
    let link = c.stat("fo", "/data/a/link").await.unwrap().unwrap();
    assert_eq!(link.link_target.as_deref(), Some("/etc/passwd"));
    assert_eq!(link.path, "/data/a/link");
    let e = c.stat("fo", "/data/nope").await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("/data/nope"), "{e:?}");
    let e = read(c, "fo", "/data/a").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::IsADirectory);
    assert!(e.message.contains("/data/a"), "{e:?}");
    let e = c
        .write_file("fo", "/no/dir/f", None, body("x"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("/no/dir"), "{e:?}");
    let e = c
        .list_dir("fo", "/data/a/z.txt")
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotADirectory, "{e:?}");
    let e = c.remove("fo", "/data", false).await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::DirectoryNotEmpty);
    assert_eq!(ErrorCode::DirectoryNotEmpty.http_status(), 409);
    c.remove("fo", "/data/a/link", false)
        .await
        .unwrap()
        .unwrap();
    // The link went, not its target.
    assert!(read(c, "fo", "/etc/passwd").await.is_ok());
    c.remove("fo", "/data", true).await.unwrap().unwrap();
    assert!(
        !exec(c, "fo", &["test", "-e", "/data"])
            .await
            .status
            .success()
    );
    // Only the root filesystem: the sandbox's /proc is another mount.
    let e = c.list_dir("fo", "/proc/1").await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e:?}");
    let metrics = a.registry.render();
    assert!(metrics.contains("op=\"write\",outcome=\"ok\""), "{metrics}");
    assert!(metrics.contains("outcome=\"NotFound\""), "{metrics}");
    a.client.delete("fo", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn a_directory_is_copied_out_and_in_with_modes_and_links() {
    let env = env();
    let a = TestAgent::start(&env, "files-tar", 2).await;
    sandbox(&a, &env, "ft").await;
    let c = &a.client;
    exec(
        c,
        "ft",
        &[
            "sh",
            "-c",
            "mkdir -p /src/tree/sub && printf one > /src/tree/one && printf deep > /src/tree/sub/deep \
             && chmod 751 /src/tree/one && chmod 700 /src/tree/sub && ln -s one /src/tree/rel && ln -s /etc /src/tree/abs",
        ],
    )
    .await;
    let archive = tar_of(c, "ft", "/src/tree").await;
    let mut entries: Vec<(String, u32)> = tar::Archive::new(&archive[..])
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.header().mode().unwrap(),
            )
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            ("tree/".to_string(), 0o755),
            ("tree/abs".to_string(), 0o777),
            ("tree/one".to_string(), 0o751),
            ("tree/rel".to_string(), 0o777),
            ("tree/sub/".to_string(), 0o700),
            ("tree/sub/deep".to_string(), 0o644),
        ]
    );
    // And back in, somewhere else.
    c.mkdir("ft", "/copy", None).await.unwrap().unwrap();
    c.untar("ft", "/copy", body(archive.clone()))
        .await
        .unwrap()
        .unwrap();
    let listing = |root: &'static str| async move {
        stdout(
            &exec(
                c,
                "ft",
                &["sh", "-c", &format!("cd {root} && find . | sort | while read f; do echo \"$f $(stat -c %a \"$f\") $(readlink \"$f\")\"; done")],
            )
            .await,
        )
    };
    assert_eq!(listing("/copy").await, listing("/src").await);
    assert_eq!(
        stdout(&exec(c, "ft", &["cat", "/copy/tree/sub/deep"]).await),
        "deep"
    );
    // A tree made by the client goes in too (the `cp -r` upload).
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o700);
    h.set_size(5);
    b.append_data(&mut h, "up/bin/run.sh", &b"hello"[..])
        .unwrap();
    let up = b.into_inner().unwrap();
    c.untar("ft", "/copy", body(up)).await.unwrap().unwrap();
    let o = exec(c, "ft", &["stat", "-c", "%a %s", "/copy/up/bin/run.sh"]).await;
    assert_eq!(stdout(&o), "700 5\n");
    // The whole root archives without crossing into /proc or /sys.
    let all = tar_of(c, "ft", "/").await;
    let names: Vec<String> = tar::Archive::new(&all[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "copy/tree/sub/deep"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("proc/1")), "{names:?}");
    a.client.delete("ft", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn symlinks_and_dot_dot_never_reach_the_host() {
    let env = env();
    let a = TestAgent::start(&env, "files-escape", 2).await;
    sandbox(&a, &env, "fe").await;
    let c = &a.client;
    let host = tempfile::tempdir().unwrap();
    let secret = host.path().join("secret");
    std::fs::write(&secret, "host secret\n").unwrap();
    let secret_path = secret.display().to_string();
    let host_dir = host.path().display().to_string();
    exec(
        c,
        "fe",
        &[
            "sh",
            "-c",
            &format!(
                "ln -s {secret_path} /tmp/abs && ln -s ../../../../../../../../{secret_path} /tmp/rel \
                 && ln -s {host_dir} /tmp/dir && ln -s /proc/1/root /tmp/magic"
            ),
        ],
    )
    .await;
    for path in ["/tmp/abs", "/tmp/rel", "/tmp/dir/secret"] {
        let e = read(c, "fe", path).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound, "{path}: {e:?}");
    }
    // The sandbox's /proc is another mount, and /proc/<pid>/root a magic link.
    let e = c.list_dir("fe", "/tmp/magic").await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e:?}");
    let e = c
        .write_file("fe", "/tmp/dir/secret", None, body("overwritten"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
    // `..` in the request is refused, naming the parameter.
    let (status, answer) = c
        .call::<serde_json::Value>(
            http::Method::GET,
            &format!("/v1/sandboxes/fe/files?path=/tmp/../..{secret_path}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let e = answer.unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::InvalidArgument, Some("path"))
    );
    assert!(e.message.contains(".."), "{e:?}");
    // An archive with `..` or a link to climb through is refused.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "up", &host_dir).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    b.append_data(&mut h, "up/secret", &b"bad"[..]).unwrap();
    let through_link = b.into_inner().unwrap();
    let e = c
        .untar("fe", "/tmp", body(through_link))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e:?}");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "host secret\n");
    assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 1);
    a.client.delete("fe", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn a_root_changed_to_the_sandboxs_proc_serves_nothing_of_the_kernel() {
    let env = env();
    let a = TestAgent::start(&env, "files-chroot", 2).await;
    let c = &a.client;
    // Process 1 makes its own /proc its root (keeping CAP_SYS_CHROOT, as a
    // container does) and runs on through another process's root.
    a.client
        .create(&request(
            &env,
            "fc",
            &[
                "sh",
                "-c",
                "sleep 100000 & exec chroot /proc /$!/root/bin/sleep 100000",
            ],
        ))
        .await
        .unwrap()
        .1
        .unwrap();
    wait_for(
        "process 1 to change root",
        Duration::from_secs(20),
        || async { stdout(&exec(c, "fc", &["readlink", "/proc/1/root"]).await).trim() == "/proc" },
    )
    .await;
    for path in ["/kallsyms", "/iomem", "/1/environ"] {
        let e = read(c, "fc", path).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{path}: {e:?}");
        assert!(e.message.contains("made /proc or /sys its root"), "{e:?}");
    }
    let e = c.list_dir("fc", "/").await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied, "{e:?}");
    a.client.delete("fc", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn uploads_are_bounded_and_files_need_a_running_sandbox() {
    let env = env();
    let a = TestAgent::start_with(&env, "files-limits", 2, |c| c.max_upload_bytes = 1 << 20).await;
    sandbox(&a, &env, "fl").await;
    let c = &a.client;
    let ok = vec![7u8; 1 << 20];
    c.write_file("fl", "/tmp/ok", None, body(ok))
        .await
        .unwrap()
        .unwrap();
    let (status, answer) = c
        .call_body::<serde_json::Value>(
            http::Method::PUT,
            "/v1/sandboxes/fl/files?path=/tmp/big",
            None,
            body(vec![7u8; (1 << 20) + 1]),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.unwrap_err().code, ErrorCode::PayloadTooLarge);
    // A stream with no length announced is cut off the same way.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        for _ in 0..40 {
            if tx.send(Ok(Bytes::from(vec![1u8; 64 << 10]))).await.is_err() {
                return;
            }
        }
    });
    let streamed =
        fast_sandbox_server::body::stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let e = c
        .write_file("fl", "/tmp/big", None, streamed)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::PayloadTooLarge, "{e:?}");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2 << 20);
    h.set_mode(0o644);
    b.append_data(&mut h, "big", &vec![0u8; 2 << 20][..])
        .unwrap();
    let e = c
        .untar("fl", "/tmp", body(b.into_inner().unwrap()))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::PayloadTooLarge, "{e:?}");
    // Nothing half-written is left.
    let names: Vec<String> = c
        .list_dir("fl", "/tmp")
        .await
        .unwrap()
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["ok"]);

    a.client
        .create(&request(&env, "gone", &["true"]))
        .await
        .unwrap()
        .1
        .unwrap();
    wait_for("sandbox gone to exit", Duration::from_secs(20), || async {
        a.client.get("gone").await.unwrap().unwrap().state == ContainerState::Exited
    })
    .await;
    let e = c.stat("gone", "/").await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::SandboxNotRunning, "{e:?}");
    assert!(e.message.contains("exit code 0"), "{e:?}");
    let e = c.stat("none", "/").await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    a.client.delete("gone", 0).await.unwrap().1.unwrap();
    a.client.delete("fl", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn archive_metadata_and_directories_stay_bounded() {
    let env = env();
    let a = TestAgent::start(&env, "files-archive-bounds", 2).await;
    sandbox(&a, &env, "fa").await;
    let c = &a.client;

    // A long name whose header claims 512 MiB, of which 64 KiB follow:
    // refused from the header, before any of it is held.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_path("././@LongLink").unwrap();
    h.set_size(512 << 20);
    h.set_cksum();
    let mut bomb = h.as_bytes().to_vec();
    bomb.extend(std::iter::repeat_n(b'a', 64 << 10));
    let e = c
        .untar("fa", "/tmp", body(bomb))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        e.message.contains("536870912 bytes") && e.message.contains("at most 1048576"),
        "{e:?}"
    );

    // More directories than the agent holds open, the last read-only with a
    // file inside: all extracted, with their modes.
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..1500 {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(if i == 1499 { 0o555 } else { 0o750 });
        h.set_mtime(1_000_000_000);
        b.append_data(&mut h, format!("many/d{i:04}"), &b""[..])
            .unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    b.append_data(&mut h, "many/d1499/inside", &b"hello"[..])
        .unwrap();
    c.untar("fa", "/tmp", body(b.into_inner().unwrap()))
        .await
        .unwrap()
        .unwrap();
    let listed = c.list_dir("fa", "/tmp/many").await.unwrap().unwrap().items;
    assert_eq!(listed.len(), 1500);
    for (name, mode) in [("d0000", 0o750), ("d1200", 0o750), ("d1499", 0o555)] {
        let info = c
            .stat("fa", &format!("/tmp/many/{name}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.mode, mode, "{name}");
    }
    let first = c.stat("fa", "/tmp/many/d0000").await.unwrap().unwrap();
    assert_eq!(first.modified_at.timestamp(), 1_000_000_000);
    assert_eq!(
        read(c, "fa", "/tmp/many/d1499/inside").await.unwrap(),
        b"hello"
    );
    a.client.delete("fa", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}
