//! A tenant at its limits blocks only itself, through the access API as
//! users drive it (the `kubectl sandbox` library), as the namespace's
//! `edit` tenant:
//! - stdin a process never reads, megabytes of it, stalls that exec alone:
//!   every other upload, exec and stdin to the same agent still flows;
//! - a sandbox running as many execs as it may refuses the next with
//!   a message naming the limit, while its neighbour on the same agent
//!   execs freely, and takes execs again once one ends;
//! - a user of another namespace learns nothing from either.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fast_sandbox_cli::exec::{ExecOptions, Streams, exec};
use fast_sandbox_cli::files;
use fast_sandbox_e2e::scenario::{BUSYBOX, ready_pool, running_sandbox};
use fast_sandbox_e2e::{cluster_client, delete_namespace, editor, namespace};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(120);
/// How long an exec or transfer may take while a neighbour is stalled.
const UNBLOCKED: Duration = Duration::from_secs(30);
/// The agent's bound on exec'd processes per sandbox.
const MAX_EXECS: usize = 128;

/// Runs `command` with `stdin` and returns (exit code, stdout, stderr).
async fn run(
    client: &kube::Client,
    ns: &str,
    name: &str,
    command: &[&str],
    stdin: Option<Vec<u8>>,
) -> Result<(i32, String, String), fast_sandbox_cli::AccessError> {
    let opts = ExecOptions {
        command: command.iter().map(|s| s.to_string()).collect(),
        stdin: stdin.is_some(),
        ..Default::default()
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let io = Streams {
        stdin: Cursor::new(stdin.unwrap_or_default()),
        stdout: &mut out,
        stderr: &mut err,
        resize: None,
    };
    let code = exec(client.clone(), ns, name, &opts, io).await?;
    Ok((
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    ))
}

/// Runs `command` with `stdin` as a neighbour stalls, within [`UNBLOCKED`].
async fn run_unblocked(
    client: &kube::Client,
    ns: &str,
    name: &str,
    command: &[&str],
    stdin: Option<Vec<u8>>,
) -> (i32, String, String) {
    tokio::time::timeout(UNBLOCKED, run(client, ns, name, command, stdin))
        .await
        .unwrap_or_else(|_| panic!("{command:?} in {name} stalled past {UNBLOCKED:?}"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_nobody_reads_stalls_only_its_own_exec() {
    let admin = cluster_client("stalled stdin").await;
    let ns = namespace(&admin, "e2e-stall").await.unwrap();
    let other = namespace(&admin, "e2e-stall-other").await.unwrap();
    // One agent: both sandboxes' streams share its connection to the
    // access server.
    ready_pool(&admin, &ns, "p", (1, 1), 4, WAIT).await.unwrap();
    let tenant = editor(&admin, &ns, "e2e-stall-editor").await;
    let stranger = editor(&admin, &other, "e2e-stall-stranger").await;
    for name in ["stuck", "busy"] {
        running_sandbox(&tenant, &ns, name, BUSYBOX, &["/bin/sleep", "3600"], WAIT)
            .await
            .unwrap();
    }

    // 64 MiB of stdin for a process that never reads it: more than every
    // buffer on its way holds, kernel sockets included.
    let (mut feed, stdin) = tokio::io::duplex(64 * 1024);
    let fed = Arc::new(AtomicUsize::new(0));
    let feeder = tokio::spawn({
        let fed = fed.clone();
        async move {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..1024 {
                if feed.write_all(&chunk).await.is_err() {
                    return;
                }
                fed.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        }
    });
    let stalled = tokio::spawn({
        let (tenant, ns) = (tenant.clone(), ns.clone());
        async move {
            let opts = ExecOptions {
                command: vec!["sleep".into(), "3600".into()],
                stdin: true,
                ..Default::default()
            };
            let io = Streams {
                stdin,
                stdout: tokio::io::sink(),
                stderr: tokio::io::sink(),
                resize: None,
            };
            exec(tenant, &ns, "stuck", &opts, io).await
        }
    });
    // Wait until the stream has taken what every buffer on its way holds
    // (the pipe, the agent's window, the access server, the apiserver) and
    // stopped: its count no longer moves for a second.
    let deadline = tokio::time::Instant::now() + UNBLOCKED;
    let mut last = usize::MAX;
    loop {
        let now = fed.load(Ordering::SeqCst);
        if now == last && now >= 1 << 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stdin nobody reads never filled its buffers: {now} bytes taken"
        );
        assert!(
            !stalled.is_finished(),
            "the stalled exec ended: {:?}",
            stalled.await
        );
        last = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        fed.load(Ordering::SeqCst) < 64 << 20,
        "stdin nobody reads was taken whole"
    );

    // The neighbour's upload, exec with stdin and download still flow.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("blob");
    std::fs::write(&src, vec![b'y'; 4 << 20]).unwrap();
    tokio::time::timeout(
        UNBLOCKED,
        files::upload(&tenant, &ns, "busy", &src, "/tmp/blob"),
    )
    .await
    .expect("an upload to a neighbour stalled behind stdin nobody reads")
    .unwrap();
    let (code, out, err) = run_unblocked(
        &tenant,
        &ns,
        "busy",
        &["sh", "-c", "wc -c < /tmp/blob; wc -c"],
        Some(vec![b'z'; 2 << 20]),
    )
    .await;
    assert_eq!(
        (code, out.split_whitespace().collect::<Vec<_>>()),
        (0, vec!["4194304", "2097152"]),
        "{err}"
    );
    let back = dir.path().join("back");
    tokio::time::timeout(
        UNBLOCKED,
        files::download(&tenant, &ns, "busy", "/tmp/blob", &back),
    )
    .await
    .expect("a download from a neighbour stalled behind stdin nobody reads")
    .unwrap();
    assert_eq!(std::fs::metadata(&back).unwrap().len(), 4 << 20);
    // The stalled sandbox itself answers other execs too.
    let (code, out, _) = run_unblocked(&tenant, &ns, "stuck", &["echo", "alive"], None).await;
    assert_eq!((code, out.as_str()), (0, "alive\n"));

    // A user of another namespace can neither reach nor see it.
    let e = run(&stranger, &ns, "stuck", &["true"], None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("forbidden"), "{e}");

    stalled.abort();
    feeder.abort();
    delete_namespace(&admin, &ns).await;
    delete_namespace(&admin, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_at_its_exec_quota_refuses_only_more_execs() {
    let admin = cluster_client("exec quota").await;
    let ns = namespace(&admin, "e2e-quota").await.unwrap();
    let other = namespace(&admin, "e2e-quota-other").await.unwrap();
    ready_pool(&admin, &ns, "p", (1, 1), 4, WAIT).await.unwrap();
    let tenant = editor(&admin, &ns, "e2e-quota-editor").await;
    let stranger = editor(&admin, &other, "e2e-quota-stranger").await;
    for name in ["full", "neighbour"] {
        running_sandbox(&tenant, &ns, name, BUSYBOX, &["/bin/sleep", "3600"], WAIT)
            .await
            .unwrap();
    }

    // As many attached execs as a sandbox may run, each saying when it runs.
    let mut holders = Vec::new();
    let mut started = Vec::new();
    for _ in 0..MAX_EXECS {
        let (stdout, seen) = tokio::io::duplex(1024);
        let (tenant, ns) = (tenant.clone(), ns.clone());
        holders.push(tokio::spawn(async move {
            let opts = ExecOptions {
                command: vec!["sh".into(), "-c".into(), "echo up; exec sleep 3600".into()],
                ..Default::default()
            };
            let io = Streams {
                stdin: tokio::io::empty(),
                stdout,
                stderr: tokio::io::sink(),
                resize: None,
            };
            exec(tenant, &ns, "full", &opts, io).await
        }));
        started.push(seen);
    }
    for (i, seen) in started.iter_mut().enumerate() {
        let mut line = String::new();
        tokio::time::timeout(WAIT, BufReader::new(seen).read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("exec {i} of {MAX_EXECS} not running within {WAIT:?}"))
            .unwrap();
        assert_eq!(line, "up\n", "exec {i}: {:?}", holders[i].is_finished());
    }

    // The next is refused, naming the limit; nothing runs.
    let e = run(&tenant, &ns, "full", &["touch", "/tmp/ran"], None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("already runs {MAX_EXECS} exec'd processes")),
        "{e}"
    );
    // The neighbour on the same agent execs freely.
    let (code, out, _) = run_unblocked(&tenant, &ns, "neighbour", &["echo", "free"], None).await;
    assert_eq!((code, out.as_str()), (0, "free\n"));
    // Another namespace's user is refused by RBAC, not told of the quota.
    let e = run(&stranger, &ns, "full", &["true"], None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("forbidden") && !e.contains("exec'd"), "{e}");

    // One ends: the sandbox takes an exec again.
    holders.pop().unwrap().abort();
    drop(started.pop());
    let deadline = tokio::time::Instant::now() + UNBLOCKED;
    let out = loop {
        match run(
            &tenant,
            &ns,
            "full",
            &["sh", "-c", "test -e /tmp/ran || echo never-ran"],
            None,
        )
        .await
        {
            Ok((0, out, _)) => break out,
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no exec accepted {UNBLOCKED:?} after one of {MAX_EXECS} ended: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(out, "never-ran\n", "the refused exec ran");
    for h in &holders {
        assert!(!h.is_finished(), "a running exec ended");
    }
    for h in holders {
        h.abort();
    }
    delete_namespace(&admin, &ns).await;
    delete_namespace(&admin, &other).await;
}
