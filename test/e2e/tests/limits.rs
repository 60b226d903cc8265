//! A tenant at its limits blocks only itself, through the access API as
//! users drive it (the `kubectl sandbox` library), as the namespace's
//! `edit` tenant:
//! - stdin a process never reads, megabytes of it, stalls that exec alone:
//!   every other upload, exec and stdin to the same agent still flows;
//! - a sandbox running as many execs as it may refuses the next with
//!   a message naming the limit, while its neighbour on the same agent
//!   execs freely, and takes execs again once one ends;
//! - a client that goes away while stdin streams into a process that
//!   stopped reading it (its output unread) leaves nothing running;
//! - an uploaded archive whose long name claims 512 MiB is refused from
//!   its header, naming the bound, and the agent serves on;
//! - `kubectl scale` past a pool's poolMax is refused, naming both;
//! - a pool whose agents no node can take says so in its Ready condition,
//!   and so do its waiting sandboxes;
//! - a user of another namespace learns nothing from any of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fast_sandbox_cli::exec::{ExecOptions, Streams, exec};
use fast_sandbox_cli::files;
use fast_sandbox_e2e::scenario::{BUSYBOX, agent_counter, ready_pool, running_sandbox};
use tenancy::{Cast, WAIT, try_run_with};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

mod tenancy;

/// How long an exec or transfer may take while a neighbour is stalled.
const UNBLOCKED: Duration = Duration::from_secs(30);
/// The agent's bound on exec'd processes per sandbox.
const MAX_EXECS: usize = 128;

/// One agent serving sandboxes `names` in the cast's namespace: their
/// streams share its connection to each access-server replica.
async fn on_one_agent(cast: &Cast, names: &[&str]) {
    ready_pool(&cast.admin, &cast.ns, "p", (1, 1), 4, WAIT)
        .await
        .unwrap();
    for name in names {
        running_sandbox(
            &cast.tenant,
            &cast.ns,
            name,
            BUSYBOX,
            &["/bin/sleep", "3600"],
            WAIT,
        )
        .await
        .unwrap();
    }
}

/// Runs `command` with `stdin` as a neighbour stalls, within [`UNBLOCKED`].
async fn run_unblocked(
    client: &kube::Client,
    ns: &str,
    name: &str,
    command: &[&str],
    stdin: Option<Vec<u8>>,
) -> (i32, String, String) {
    tokio::time::timeout(UNBLOCKED, try_run_with(client, ns, name, command, stdin))
        .await
        .unwrap_or_else(|_| panic!("{command:?} in {name} stalled past {UNBLOCKED:?}"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_nobody_reads_stalls_only_its_own_exec() {
    let cast = Cast::new("stalled stdin", "e2e-stall").await;
    on_one_agent(&cast, &["stuck", "busy"]).await;
    let (ns, tenant, stranger) = (cast.ns.clone(), cast.tenant.clone(), cast.stranger.clone());

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
    let e = try_run_with(&stranger, &ns, "stuck", &["true"], None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("forbidden"), "{e}");

    stalled.abort();
    feeder.abort();
    cast.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_at_its_exec_quota_refuses_only_more_execs() {
    let cast = Cast::new("exec quota", "e2e-quota").await;
    on_one_agent(&cast, &["full", "neighbour"]).await;
    let (ns, tenant, stranger) = (cast.ns.clone(), cast.tenant.clone(), cast.stranger.clone());

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
    let e = try_run_with(&tenant, &ns, "full", &["touch", "/tmp/ran"], None)
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
    let e = try_run_with(&stranger, &ns, "full", &["true"], None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("forbidden") && !e.contains("exec'd"), "{e}");

    // One ends: the sandbox takes an exec again.
    holders.pop().unwrap().abort();
    drop(started.pop());
    let deadline = tokio::time::Instant::now() + UNBLOCKED;
    let out = loop {
        match try_run_with(
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
    cast.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_claiming_a_huge_long_name_is_refused_from_its_header() {
    let cast = Cast::new("archive bound", "e2e-tarbomb").await;
    on_one_agent(&cast, &["sb"]).await;
    let (ns, tenant, stranger) = (cast.ns.clone(), cast.tenant.clone(), cast.stranger.clone());

    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_path("././@LongLink").unwrap();
    h.set_size(512 << 20);
    h.set_cksum();
    let mut bomb = h.as_bytes().to_vec();
    bomb.extend(std::iter::repeat_n(b'a', 64 << 10));
    let untar = |client: kube::Client, bomb: Vec<u8>| {
        let ns = ns.clone();
        async move {
            let req = http::Request::put(format!(
                "/apis/subresources.sandbox.fast.io/v1alpha1/namespaces/{ns}/sandboxes/sb/files?path=/tmp&op=untar"
            ))
            .body(bomb)
            .unwrap();
            tokio::time::timeout(UNBLOCKED, client.request_text(req))
                .await
                .expect("an untar was not answered")
        }
    };
    let e = untar(tenant.clone(), bomb.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("536870912 bytes") && e.contains("at most 1048576"),
        "{e}"
    );
    let e = untar(stranger, bomb).await.unwrap_err().to_string();
    assert!(e.contains("forbidden") && !e.contains("bytes"), "{e}");
    let (code, out, _) = run_unblocked(&tenant, &ns, "sb", &["ls", "/tmp"], None).await;
    assert_eq!((code, out.as_str()), (0, ""), "nothing was extracted");
    cast.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_leaves_nothing_running() {
    let cast = Cast::new("gone mid-stream", "e2e-gone").await;
    on_one_agent(&cast, &["sb"]).await;
    let (ns, tenant, stranger) = (cast.ns.clone(), cast.tenant.clone(), cast.stranger.clone());
    let sandboxes: kube::Api<fast_sandbox_api::Sandbox> =
        kube::Api::namespaced(cast.admin.clone(), &ns);
    let agent = sandboxes
        .get("sb")
        .await
        .unwrap()
        .spec
        .agent_ref
        .unwrap()
        .pod_name;
    let ends = || async {
        let mut n = 0.0;
        for outcome in ["ended", "none"] {
            n += agent_counter(
                &cast.admin,
                &agent,
                "fast_sandbox_agent_exec_session_ends_total",
                &format!("outcome=\"{outcome}\""),
            )
            .await
            .unwrap();
        }
        n
    };
    let ends_before = ends().await;
    let ps = || async {
        run_unblocked(&tenant, &ns, "sb", &["ps", "-o", "args"], None)
            .await
            .1
    };
    // Endless stdin, and a client that stops reading the output: `cat`
    // blocks writing, stops reading, and the stdin it was sent fills every
    // window on the way.
    let (stdout, unread) = tokio::io::duplex(1024);
    let client = tokio::spawn({
        let (tenant, ns) = (tenant.clone(), ns.clone());
        async move {
            let opts = ExecOptions {
                command: vec!["sh".into(), "-c".into(), "cat; echo never".into()],
                stdin: true,
                ..Default::default()
            };
            let io = Streams {
                stdin: tokio::io::repeat(b'z'),
                stdout,
                stderr: tokio::io::sink(),
                resize: None,
            };
            exec(tenant, &ns, "sb", &opts, io).await
        }
    });
    let deadline = tokio::time::Instant::now() + UNBLOCKED;
    while !ps().await.contains("cat") {
        assert!(tokio::time::Instant::now() < deadline, "cat never ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The client goes away (its connection dropped, as a killed
    // `kubectl sandbox` drops it).
    client.abort();
    drop(unread);
    let deadline = tokio::time::Instant::now() + UNBLOCKED;
    loop {
        let left = ps().await;
        // Killed, `cat` may stay a zombie ("[cat]"): the sandbox's PID 1,
        // a plain sleep, reaps nothing it inherits.
        if !left.lines().any(|l| l.trim() == "cat") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the process outlived its client by {UNBLOCKED:?}: {left}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // One end asked of the agent, for the exec whose client went (it may
    // land after the broken stream stopped the process); none for the
    // execs that finished (the ps above).
    let deadline = tokio::time::Instant::now() + UNBLOCKED;
    while ends().await - ends_before < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the access server never asked the agent to end the exec"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        ends().await - ends_before,
        1.0,
        "ends asked of the agent: finished execs were asked to end too"
    );
    // Another namespace's user cannot end or see anything of it.
    let e = try_run_with(&stranger, &ns, "sb", &["true"], None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("forbidden"), "{e}");
    cast.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_no_node_can_take_says_why() {
    let cast = Cast::new("unschedulable pool", "e2e-nonode").await;
    let mut p = tenancy::pool("p", BUSYBOX, None);
    p.spec.agent_template = serde_json::from_value(serde_json::json!({"spec": {"containers": [{
        "name": "agent", "image": fast_sandbox_e2e::scenario::AGENT_IMAGE,
        "resources": {"requests": {"memory": "1Pi"}}
    }]}}))
    .unwrap();
    let mine: kube::Api<fast_sandbox_api::SandboxPool> =
        kube::Api::namespaced(cast.tenant.clone(), &cast.ns);
    mine.create(&Default::default(), &p).await.unwrap();
    let pool = fast_sandbox_e2e::wait_for(
        &mine,
        "p",
        WAIT,
        "Ready to say no node takes the agent",
        |p: &fast_sandbox_api::SandboxPool| {
            p.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Ready" && c.status == "False" && c.message.contains("finds no node")
                })
            })
        },
    )
    .await
    .unwrap();
    let ready = pool
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(
        ready.message.contains("0 of 1 agents ready"),
        "{}",
        ready.message
    );
    // A sandbox of it waits, and says why.
    let sandboxes: kube::Api<fast_sandbox_api::Sandbox> =
        kube::Api::namespaced(cast.tenant.clone(), &cast.ns);
    sandboxes
        .create(
            &Default::default(),
            &tenancy::sandbox("waits", BUSYBOX, &["/bin/sleep", "60"], None),
        )
        .await
        .unwrap();
    fast_sandbox_e2e::wait_for(
        &sandboxes,
        "waits",
        WAIT,
        "the sandbox to say no node takes its agent",
        |s: &fast_sandbox_api::Sandbox| {
            s.condition(fast_sandbox_api::wellknown::condition::SCHEDULED)
                .is_some_and(|c| {
                    c.status == "False" && c.message.contains("no node can take 1 of them")
                })
        },
    )
    .await
    .unwrap();
    let theirs: kube::Api<fast_sandbox_api::SandboxPool> =
        kube::Api::namespaced(cast.stranger.clone(), &cast.ns);
    let e = theirs.get("p").await.unwrap_err().to_string();
    assert!(e.contains("forbidden"), "{e}");
    cast.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_past_pool_max_is_refused() {
    let cast = Cast::new("scale past poolMax", "e2e-scale").await;
    on_one_agent(&cast, &[]).await;
    let mine: kube::Api<fast_sandbox_api::SandboxPool> =
        kube::Api::namespaced(cast.tenant.clone(), &cast.ns);
    // What `kubectl scale sbp/p --replicas=50` sends, as the tenant: the
    // scale subresource goes through the pool's own validation.
    let scale = serde_json::json!({"spec": {"replicas": 50}});
    let params = kube::api::PatchParams::default();
    let e = mine
        .patch_scale("p", &params, &kube::api::Patch::Merge(&scale))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.replicas") && e.contains("must not exceed capacity.poolMax"),
        "{e}"
    );
    let pool = mine.get("p").await.unwrap();
    assert_eq!(pool.spec.replicas, None, "nothing was written");
    assert_eq!(pool.status.unwrap().agents, 1);
    // Within bounds, it is taken.
    let one = serde_json::json!({"spec": {"replicas": 1}});
    mine.patch_scale("p", &params, &kube::api::Patch::Merge(&one))
        .await
        .unwrap();
    // Another namespace's user can neither read nor scale it.
    let theirs: kube::Api<fast_sandbox_api::SandboxPool> =
        kube::Api::namespaced(cast.stranger.clone(), &cast.ns);
    let e = theirs
        .patch_scale("p", &params, &kube::api::Patch::Merge(&one))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("forbidden"), "{e}");
    cast.finish().await;
}
