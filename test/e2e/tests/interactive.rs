//! Interactive sandboxes through the access API, as users drive them:
//! exec (stdin, stderr apart, exit codes, a terminal with resize, many at
//! once, a large output, a client that goes away), files (binary round
//! trips, modes, directories both ways, escapes refused, a root changed
//! to /proc served nothing, an image with no shell), and RBAC (`view` cannot exec, another namespace cannot do
//! anything). Clients are the `kubectl sandbox` library and the plugin.

use std::io::Cursor;
use std::process::Command;
use std::time::Duration;

use fast_sandbox_api::files::FileType;
use fast_sandbox_cli::exec::{ExecOptions, Streams, exec};
use fast_sandbox_cli::files;
use fast_sandbox_e2e::scenario::{BUSYBOX, ready_pool, running_sandbox};
use fast_sandbox_e2e::{cluster_client, delete_namespace, impersonating, namespace};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);
const NOSHELL: &str = "docker.io/fast-sandbox/noshell:dev";

/// Runs `command` with `stdin` and returns (exit code, stdout, stderr).
async fn run(
    client: &Client,
    ns: &str,
    name: &str,
    command: &[&str],
    stdin: Option<&[u8]>,
) -> Result<(i32, Vec<u8>, Vec<u8>), fast_sandbox_cli::AccessError> {
    let opts = ExecOptions {
        command: command.iter().map(|s| s.to_string()).collect(),
        stdin: stdin.is_some(),
        ..Default::default()
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    let io = Streams {
        stdin: Cursor::new(stdin.unwrap_or_default().to_vec()),
        stdout: &mut out,
        stderr: &mut err,
        resize: None,
    };
    let code = exec(client.clone(), ns, name, &opts, io).await?;
    Ok((code, out, err))
}

fn sha256(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

async fn bind(client: &Client, ns: &str, user: &str, role: &str) {
    let api: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let rb: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{user}-{role}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    }))
    .unwrap();
    api.create(&PostParams::default(), &rb).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_stdin_stdout_stderr_and_exit_codes() {
    let admin = cluster_client("exec").await;
    let ns = namespace(&admin, "e2e-exec").await.unwrap();
    ready_pool(&admin, &ns, "p", (1, 2), 8, WAIT).await.unwrap();
    bind(&admin, &ns, "e2e-exec-editor", "edit").await;
    let editor = impersonating("e2e-exec-editor").await;
    running_sandbox(&admin, &ns, "sb", BUSYBOX, &["/bin/sleep", "3600"], WAIT)
        .await
        .unwrap();

    let (code, out, err) = run(
        &editor,
        &ns,
        "sb",
        &["sh", "-c", "cat; echo oops >&2; exit 42"],
        Some(b"piped in\n"),
    )
    .await
    .unwrap();
    assert_eq!(code, 42);
    assert_eq!(out, b"piped in\n");
    assert_eq!(err, b"oops\n", "stderr kept apart from stdout");

    let (code, _, err) = run(&editor, &ns, "sb", &["no-such-command"], None)
        .await
        .unwrap();
    assert_eq!(code, 127, "{}", String::from_utf8_lossy(&err));
    assert!(String::from_utf8_lossy(&err).contains("no-such-command"));

    // A timeout kills the command and says so.
    let opts = ExecOptions {
        command: vec!["sleep".into(), "30".into()],
        timeout_seconds: Some(1),
        ..Default::default()
    };
    let io = Streams {
        stdin: Cursor::new(Vec::new()),
        stdout: Vec::new(),
        stderr: Vec::new(),
        resize: None,
    };
    assert_eq!(
        exec(editor.clone(), &ns, "sb", &opts, io).await.unwrap(),
        124
    );

    // A terminal, resized.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send((120, 40)).await.unwrap();
    let opts = ExecOptions {
        command: vec!["sh".into(), "-c".into(), "sleep 1; stty size".into()],
        tty: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    let io = Streams {
        stdin: Cursor::new(Vec::new()),
        stdout: &mut out,
        stderr: Vec::new(),
        resize: Some(rx),
    };
    assert_eq!(exec(editor.clone(), &ns, "sb", &opts, io).await.unwrap(), 0);
    assert!(
        String::from_utf8_lossy(&out).contains("40 120"),
        "stty size: {:?}",
        String::from_utf8_lossy(&out)
    );
    drop(tx);

    // Sixteen at once.
    let runs: Vec<_> = (0..16)
        .map(|i| {
            let (editor, ns) = (editor.clone(), ns.clone());
            tokio::spawn(async move {
                run(
                    &editor,
                    &ns,
                    "sb",
                    &["sh", "-c", &format!("echo {i}")],
                    None,
                )
                .await
            })
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        let (code, out, _) = r.await.unwrap().unwrap();
        assert_eq!(
            (code, String::from_utf8_lossy(&out).trim().to_string()),
            (0, i.to_string())
        );
    }

    // 50 MiB of output, nothing lost.
    let (code, out, _) = run(
        &editor,
        &ns,
        "sb",
        &["sh", "-c", "head -c 52428800 /dev/zero | tr '\\0' 'x'"],
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert_eq!(out.len(), 52_428_800);
    assert!(out.iter().all(|b| *b == b'x'));

    // The exit code propagates through kubectl too.
    let out = Command::new("kubectl")
        .env("PATH", plugin_path())
        .args([
            "sandbox", "exec", "sb", "-n", &ns, "--", "sh", "-c", "exit 7",
        ])
        .output()
        .expect("kubectl runs");
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    delete_namespace(&admin, &ns).await;
}

/// `PATH` with the plugin built next to this test binary first.
fn plugin_path() -> String {
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.to_path_buf()))
        .expect("the test binary's directory");
    assert!(
        bin_dir.join("kubectl-sandbox").exists(),
        "build kubectl-sandbox first"
    );
    format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_takes_its_process_along() {
    let admin = cluster_client("exec disconnect").await;
    let ns = namespace(&admin, "e2e-exec-gone").await.unwrap();
    ready_pool(&admin, &ns, "p", (1, 1), 4, WAIT).await.unwrap();
    running_sandbox(&admin, &ns, "sb", BUSYBOX, &["/bin/sleep", "3600"], WAIT)
        .await
        .unwrap();
    let opts = ExecOptions {
        command: vec!["sleep".into(), "987".into()],
        ..Default::default()
    };
    let client = admin.clone();
    let ns2 = ns.clone();
    let running = tokio::spawn(async move {
        let io = Streams {
            stdin: Cursor::new(Vec::new()),
            stdout: Vec::new(),
            stderr: Vec::new(),
            resize: None,
        };
        exec(client, &ns2, "sb", &opts, io).await
    });
    let seen = |want: bool| {
        let (admin, ns) = (admin.clone(), ns.clone());
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let (_, out, _) = run(&admin, &ns, "sb", &["ps"], None).await.unwrap();
                if String::from_utf8_lossy(&out).contains("sleep 987") == want {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "sleep 987 running: {want} not seen in 30 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    seen(true).await;
    running.abort();
    seen(false).await;
    delete_namespace(&admin, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_and_never_leave_the_sandbox() {
    let admin = cluster_client("files").await;
    let ns = namespace(&admin, "e2e-files").await.unwrap();
    ready_pool(&admin, &ns, "p", (1, 2), 8, WAIT).await.unwrap();
    bind(&admin, &ns, "e2e-files-editor", "edit").await;
    let editor = impersonating("e2e-files-editor").await;
    running_sandbox(&admin, &ns, "sb", BUSYBOX, &["/bin/sleep", "3600"], WAIT)
        .await
        .unwrap();
    let local = tempfile::tempdir().unwrap();

    // A binary file, checked by hash, with its mode.
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let src = local.path().join("blob.bin");
    std::fs::write(&src, &data).unwrap();
    std::fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o751)).unwrap();
    files::upload(&editor, &ns, "sb", &src, "/tmp/blob.bin")
        .await
        .unwrap();
    let info = files::stat(&editor, &ns, "sb", "/tmp/blob.bin")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (info.size, info.mode, info.file_type),
        (data.len() as u64, 0o751, FileType::File)
    );
    let (_, out, _) = run(&editor, &ns, "sb", &["sha256sum", "/tmp/blob.bin"], None)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out).starts_with(&sha256(&data)),
        "the sandbox sees the same bytes"
    );
    let back = local.path().join("back.bin");
    files::download(&editor, &ns, "sb", "/tmp/blob.bin", &back)
        .await
        .unwrap();
    assert_eq!(sha256(&std::fs::read(&back).unwrap()), sha256(&data));

    // A directory both ways.
    let tree = local.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), b"a").unwrap();
    std::fs::write(tree.join("sub/b.txt"), b"b").unwrap();
    std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
    files::upload(&editor, &ns, "sb", &tree, "/srv/tree")
        .await
        .unwrap();
    let (_, out, _) = run(
        &editor,
        &ns,
        "sb",
        &[
            "sh",
            "-c",
            "cat /srv/tree/a.txt /srv/tree/sub/b.txt; readlink /srv/tree/link",
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "aba.txt\n");
    let copy = local.path().join("copy");
    files::download(&editor, &ns, "sb", "/srv/tree", &copy)
        .await
        .unwrap();
    assert_eq!(std::fs::read(copy.join("sub/b.txt")).unwrap(), b"b");
    assert_eq!(
        std::fs::read_link(copy.join("link")).unwrap(),
        std::path::Path::new("a.txt")
    );

    // Escapes: a symlink to the node's root and `..` stay inside.
    run(
        &editor,
        &ns,
        "sb",
        &["ln", "-s", "/", "/tmp/root-link"],
        None,
    )
    .await
    .unwrap();
    run(
        &editor,
        &ns,
        "sb",
        &["ln", "-s", "../../../../../../etc/hostname", "/tmp/up-link"],
        None,
    )
    .await
    .unwrap();
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    for p in ["/tmp/up-link", "/tmp/root-link/etc/hostname"] {
        let got = local.path().join("escape");
        let _ = std::fs::remove_file(&got);
        if files::download(&editor, &ns, "sb", p, &got).await.is_ok() {
            let text = std::fs::read_to_string(&got).unwrap_or_default();
            assert!(
                host.is_empty() || text != host,
                "{p} reached the node's /etc/hostname"
            );
        }
    }
    let err = files::stat(&editor, &ns, "sb", "/tmp/../../etc")
        .await
        .unwrap_err();
    assert!(err.to_string().contains(".."), "{err}");

    // The tenant's process 1 makes its own /proc its root (a container
    // keeps CAP_SYS_CHROOT) and runs on through another process's root:
    // the files API serves nothing of the kernel through it, to the tenant
    // or to a reader.
    running_sandbox(
        &editor,
        &ns,
        "chrooted",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "sleep 100000 & exec chroot /proc /$!/root/bin/sleep 100000",
        ],
        WAIT,
    )
    .await
    .unwrap();
    bind(&admin, &ns, "e2e-files-reader", "view").await;
    let reader = impersonating("e2e-files-reader").await;
    tokio::time::timeout(WAIT, async {
        loop {
            let (_, out, _) = run(
                &editor,
                &ns,
                "chrooted",
                &["readlink", "/proc/1/root"],
                None,
            )
            .await
            .unwrap();
            if out == b"/proc\n" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("process 1 of sandbox chrooted did not make /proc its root within 120 s");
    for user in [&editor, &reader] {
        for path in ["/kallsyms", "/iomem", "/1/environ"] {
            let got = local.path().join("kernel");
            let err = files::download(user, &ns, "chrooted", path, &got)
                .await
                .expect_err(path);
            assert!(
                err.to_string().contains("made /proc or /sys its root"),
                "{path}: {err}"
            );
            assert!(!got.exists(), "{path} was written locally");
        }
        let err = files::list(user, &ns, "chrooted", "/").await.unwrap_err();
        assert!(
            err.to_string().contains("made /proc or /sys its root"),
            "{err}"
        );
    }

    // An image with no shell at all.
    running_sandbox(&admin, &ns, "bare", NOSHELL, &["/tool", "sleep"], WAIT)
        .await
        .unwrap();
    let note = local.path().join("note.txt");
    std::fs::write(&note, b"no shell needed\n").unwrap();
    files::upload(&editor, &ns, "bare", &note, "/note.txt")
        .await
        .unwrap();
    let (code, out, _) = run(&editor, &ns, "bare", &["/tool", "read", "/note.txt"], None)
        .await
        .unwrap();
    assert_eq!((code, out.as_slice()), (0, &b"no shell needed\n"[..]));
    let listing = files::list(&editor, &ns, "bare", "/").await.unwrap();
    assert!(
        listing.items.iter().any(|i| i.name == "tool"),
        "{listing:?}"
    );

    delete_namespace(&admin, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_is_copied_as_what_it_names_each_way() {
    let admin = cluster_client("cp of symlinks").await;
    let ns = namespace(&admin, "e2e-cp-links").await.unwrap();
    ready_pool(&admin, &ns, "p", (1, 1), 4, WAIT).await.unwrap();
    bind(&admin, &ns, "e2e-links-editor", "edit").await;
    let editor = impersonating("e2e-links-editor").await;
    running_sandbox(&admin, &ns, "sb", BUSYBOX, &["/bin/sleep", "3600"], WAIT)
        .await
        .unwrap();
    let (code, _, err) = run(
        &editor,
        &ns,
        "sb",
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/d && echo hi > /tmp/d/f && chmod 640 /tmp/d/f && ln -s f /tmp/d/l && ln -s ../d/l /tmp/d/l2 && ln -s /bin /tmp/binlink && ln -s nowhere /tmp/d/dangling && echo s > /tmp/suid && chmod 4755 /tmp/suid",
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    let out = tempfile::tempdir().unwrap();
    // A file through a chain of links: its content and its own mode, under
    // the link's name.
    files::download(&editor, &ns, "sb", "/tmp/d/l2", out.path())
        .await
        .unwrap();
    let got = out.path().join("l2");
    assert_eq!(std::fs::read(&got).unwrap(), b"hi\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::symlink_metadata(&got)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640,
        "the target's mode, not the link's 0777"
    );
    // A link to a directory copies the tree.
    files::download(&editor, &ns, "sb", "/tmp/binlink", &out.path().join("bin"))
        .await
        .unwrap();
    assert!(out.path().join("bin/busybox").exists());
    let e = files::download(&editor, &ns, "sb", "/tmp/d/dangling", out.path())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("which does not exist"), "{e}");
    // A setuid file comes out without the bit (a sandbox must not plant a
    // setuid binary on the machine of whoever copies it out).
    files::download(&editor, &ns, "sb", "/tmp/suid", out.path())
        .await
        .unwrap();
    let mode = std::fs::metadata(out.path().join("suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7000, 0, "mode {mode:o}");
    // Into the sandbox, a local link to a file uploads that file, its
    // content and its mode, under the link's name.
    let local = out.path().join("local");
    std::fs::create_dir(&local).unwrap();
    std::fs::write(local.join("real"), "up\n").unwrap();
    std::fs::set_permissions(local.join("real"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("real", local.join("ln")).unwrap();
    files::upload(&editor, &ns, "sb", &local.join("ln"), "/tmp")
        .await
        .unwrap();
    let (code, stdout, _) = run(
        &editor,
        &ns,
        "sb",
        &["sh", "-c", "cat /tmp/ln && stat -c %a /tmp/ln"],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (code, String::from_utf8_lossy(&stdout).as_ref()),
        (0, "up\n600\n")
    );
    delete_namespace(&admin, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_cannot_exec_and_another_namespace_cannot_do_anything() {
    let admin = cluster_client("exec RBAC").await;
    let ns = namespace(&admin, "e2e-exec-rbac").await.unwrap();
    let other = namespace(&admin, "e2e-exec-other").await.unwrap();
    ready_pool(&admin, &ns, "p", (1, 1), 4, WAIT).await.unwrap();
    running_sandbox(&admin, &ns, "sb", BUSYBOX, &["/bin/sleep", "3600"], WAIT)
        .await
        .unwrap();
    bind(&admin, &ns, "e2e-viewer", "view").await;
    bind(&admin, &other, "e2e-elsewhere", "admin").await;
    let viewer = impersonating("e2e-viewer").await;
    let stranger = impersonating("e2e-elsewhere").await;

    let err = run(&viewer, &ns, "sb", &["true"], None).await.unwrap_err();
    assert!(
        err.to_string().contains("forbidden") && err.to_string().contains("sandboxes/exec"),
        "{err}"
    );
    // view may read files, not write them.
    assert!(
        files::stat(&viewer, &ns, "sb", "/bin")
            .await
            .unwrap()
            .is_some()
    );
    let f = tempfile::NamedTempFile::new().unwrap();
    let err = files::upload(&viewer, &ns, "sb", f.path(), "/tmp/x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("forbidden"), "{err}");
    for e in [
        run(&stranger, &ns, "sb", &["true"], None)
            .await
            .map(|_| ())
            .unwrap_err(),
        files::stat(&stranger, &ns, "sb", "/")
            .await
            .map(|_| ())
            .unwrap_err(),
    ] {
        assert!(e.to_string().contains("forbidden"), "{e}");
    }
    delete_namespace(&admin, &ns).await;
    delete_namespace(&admin, &other).await;
}
