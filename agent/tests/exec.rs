//! Exec into running sandboxes over the agent's API, against a real
//! containerd and runc: output kept apart, stdin, exit codes, a terminal
//! with resize, concurrency and its bound per sandbox, timeouts, a client
//! that disconnects, the sandbox's identity and limits, and the errors a
//! user meets.

mod support;

use std::time::Duration;

use fast_sandbox_agent::client::{ExecEvent, ExecStream};
use fast_sandbox_agent::exec::MAX_EXECS_PER_SANDBOX;
use fast_sandbox_api::agent::{ContainerState, ErrorCode, ResourceLimits};
use fast_sandbox_api::exec::{ExecRequest, TerminalSize, reason};
use fast_sandbox_api::sandbox::EnvVar;
use http::StatusCode;
use support::{TestAgent, env, exec, exec_request, request, stdout, wait_for};

/// Reads stdout events until `want` appears in what was read; returns it all.
async fn read_until(s: &mut ExecStream, want: &str) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains(want) {
        let ev = tokio::time::timeout_at(deadline, s.output.next())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} within 20s; got {seen:?}"));
        match ev {
            Some(Ok(ExecEvent::Stdout(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Some(Ok(ExecEvent::Stderr(_))) => {}
            other => panic!("stream ended waiting for {want:?} ({seen:?}): {other:?}"),
        }
    }
    seen
}

async fn sandbox(a: &TestAgent, env: &support::Env, uid: &str) {
    let info = a
        .client
        .create(&request(env, uid, &["sleep", "100000"]))
        .await
        .unwrap()
        .1
        .unwrap();
    assert_eq!(info.state, ContainerState::Running);
}

async fn process_alive(a: &TestAgent, uid: &str, pid: &str) -> bool {
    exec(&a.client, uid, &["kill", "-0", pid])
        .await
        .status
        .success()
}

#[tokio::test]
async fn stdout_stderr_and_exit_code_are_kept_apart() {
    let env = env();
    let a = TestAgent::start(&env, "exec-basic", 2).await;
    sandbox(&a, &env, "eb").await;
    let mut req = exec_request(&[
        "sh",
        "-c",
        "echo out; echo err >&2; echo $GREETING $SANDBOX_ONLY; pwd; exit 42",
    ]);
    req.env = vec![EnvVar {
        name: "GREETING".into(),
        value: "hi".into(),
    }];
    req.working_dir = Some("/tmp".into());
    let o = a
        .client
        .exec_collect("eb", &req, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stdout(&o), "out\nhi\n/tmp\n");
    assert_eq!(o.stderr, b"err\n");
    assert_eq!(o.status.exit_code, Some(42));
    assert_eq!(o.status.reason, reason::ERROR);

    let ok = exec(&a.client, "eb", &["true"]).await;
    assert_eq!(ok.status.exit_code, Some(0));
    assert_eq!(ok.status.reason, reason::COMPLETED);
    assert!(ok.stdout.is_empty() && ok.stderr.is_empty());

    // A command that is not there: 127 as a shell reports it, not an error.
    let nf = exec(&a.client, "eb", &["no-such-command", "x"]).await;
    assert_eq!(nf.status.exit_code, Some(127), "{nf:?}");
    assert_eq!(nf.status.reason, reason::COMMAND_NOT_FOUND);
    assert_eq!(
        String::from_utf8_lossy(&nf.stderr),
        "no-such-command: command not found\n"
    );
    assert!(nf.status.message.contains("no-such-command"), "{nf:?}");
    let na = exec(&a.client, "eb", &["/etc/passwd"]).await;
    assert_eq!(na.status.exit_code, Some(126), "{na:?}");
    assert_eq!(na.status.reason, reason::START_FAILED);
    let mut bad_dir = exec_request(&["true"]);
    bad_dir.working_dir = Some("/no/such/dir".into());
    let bd = a
        .client
        .exec_collect("eb", &bad_dir, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bd.status.exit_code, Some(126), "{bd:?}");
    assert!(bd.status.message.contains("/no/such/dir"), "{bd:?}");

    // The sandbox is untouched by all of it.
    assert_eq!(
        a.client.get("eb").await.unwrap().unwrap().state,
        ContainerState::Running
    );
    let metrics = a.registry.render();
    assert!(metrics.contains("reason=\"CommandNotFound\""), "{metrics}");
    assert!(metrics.contains("agent_exec_start_seconds"), "{metrics}");
    a.client.delete("eb", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
    assert_no_fifos(&a);
}

fn assert_no_fifos(a: &TestAgent) {
    let left: Vec<_> = std::fs::read_dir(a.state.path().join("exec"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "exec FIFOs left: {left:?}");
}

#[tokio::test]
async fn stdin_is_piped_through_and_closed() {
    let env = env();
    let a = TestAgent::start(&env, "exec-stdin", 2).await;
    sandbox(&a, &env, "es").await;
    let mut req = exec_request(&["sh", "-c", "wc -c; cat >&2"]);
    req.stdin = true;
    // More than one frame and more than a pipe holds.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let o = a
        .client
        .exec_collect("es", &req, Some(&data))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stdout(&o).trim(), "200000");
    assert!(o.stderr.is_empty());
    assert!(o.status.success(), "{o:?}");

    // Interactive: a line in, its answer out, then end of input.
    let mut req = exec_request(&["sh", "-c", "while read l; do echo got:$l; done; echo eof"]);
    req.stdin = true;
    let mut s = a.client.exec("es", &req).await.unwrap().unwrap();
    s.input.stdin(b"one\n").await.unwrap();
    read_until(&mut s, "got:one\n").await;
    s.input.stdin(b"two\n").await.unwrap();
    read_until(&mut s, "got:two\n").await;
    s.input.close_stdin().await.unwrap();
    let rest = s.output.collect().await.unwrap();
    assert_eq!(stdout_of(&rest.stdout), "eof\n");
    assert!(rest.status.success());

    // Without stdin the process reads end-of-file at once.
    let o = exec(&a.client, "es", &["cat"]).await;
    assert!(o.status.success() && o.stdout.is_empty(), "{o:?}");
    a.client.delete("es", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

fn stdout_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn a_terminal_has_its_size_and_follows_resizes() {
    let env = env();
    let a = TestAgent::start(&env, "exec-tty", 2).await;
    sandbox(&a, &env, "et").await;
    let req = ExecRequest {
        command: vec!["sh".into()],
        tty: true,
        stdin: true,
        terminal_size: Some(TerminalSize {
            width: 100,
            height: 30,
        }),
        ..Default::default()
    };
    let mut s = a.client.exec("et", &req).await.unwrap().unwrap();
    s.input.stdin(b"stty size; tty\n").await.unwrap();
    let seen = read_until(&mut s, "/dev/pts/").await;
    assert!(seen.contains("30 100"), "{seen:?}");
    s.input.resize(120, 40).await.unwrap();
    s.input.stdin(b"stty size\n").await.unwrap();
    read_until(&mut s, "40 120").await;
    s.input.stdin(b"echo err >&2; exit 3\n").await.unwrap();
    let rest = s.output.collect().await.unwrap();
    // One stream on a terminal: stderr comes out of it too.
    assert!(rest.stderr.is_empty());
    assert_eq!(rest.status.exit_code, Some(3), "{rest:?}");
    a.client.delete("et", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn sixteen_execs_run_at_once() {
    let env = env();
    let a = TestAgent::start(&env, "exec-many", 2).await;
    sandbox(&a, &env, "em").await;
    let runs = (0..16).map(|i| {
        let client = a.client.clone();
        async move {
            let script = format!("sleep 0.5; echo {i}; echo e{i} >&2; exit {i}");
            exec(&client, "em", &["sh", "-c", &script]).await
        }
    });
    let outcomes = futures::future::join_all(runs).await;
    for (i, o) in outcomes.iter().enumerate() {
        assert_eq!(stdout(o), format!("{i}\n"));
        assert_eq!(stdout_of(&o.stderr), format!("e{i}\n"));
        assert_eq!(o.status.exit_code, Some(i as i32));
    }
    a.client.delete("em", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn a_timeout_kills_the_process() {
    let env = env();
    let a = TestAgent::start(&env, "exec-timeout", 2).await;
    sandbox(&a, &env, "eto").await;
    let mut req = exec_request(&["sh", "-c", "echo started; exec sleep 60"]);
    req.timeout_seconds = Some(1);
    let t = std::time::Instant::now();
    let o = a
        .client
        .exec_collect("eto", &req, None)
        .await
        .unwrap()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(stdout(&o), "started\n");
    assert_eq!(o.status.exit_code, Some(124), "{o:?}");
    assert_eq!(o.status.reason, reason::TIMEOUT);
    assert_eq!(o.status.signal, Some(9));
    a.client.delete("eto", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn a_client_that_disconnects_kills_its_process_unless_detached() {
    let env = env();
    let a = TestAgent::start(&env, "exec-gone", 2).await;
    sandbox(&a, &env, "eg").await;
    let start = |detach: bool| {
        let client = a.client.clone();
        async move {
            let mut req = exec_request(&["sh", "-c", "echo pid=$$; exec sleep 300"]);
            req.detach = detach;
            let mut s = client.exec("eg", &req).await.unwrap().unwrap();
            let seen = read_until(&mut s, "\n").await;
            let pid = seen
                .trim()
                .strip_prefix("pid=")
                .unwrap_or_else(|| panic!("{seen:?}"))
                .to_string();
            (s, pid)
        }
    };
    let (attached, attached_pid) = start(false).await;
    let (detached, detached_pid) = start(true).await;
    let (aborted, aborted_pid) = start(false).await;
    assert!(process_alive(&a, "eg", &attached_pid).await);
    drop(attached);
    drop(detached);
    aborted.input.abort().await;
    for pid in [&attached_pid, &aborted_pid] {
        wait_for(
            &format!("exec process {pid} killed after its client left"),
            Duration::from_secs(20),
            || {
                let a = &a;
                async move { !process_alive(a, "eg", pid).await }
            },
        )
        .await;
    }
    assert!(
        process_alive(&a, "eg", &detached_pid).await,
        "the detached exec was killed"
    );
    // Its output is drained meanwhile; it ends like any process.
    exec(&a.client, "eg", &["kill", &detached_pid]).await;
    wait_for(
        "FIFOs of ended execs removed",
        Duration::from_secs(20),
        || {
            let dir = a.state.path().join("exec");
            async move {
                std::fs::read_dir(&dir)
                    .map(|d| d.count() == 0)
                    .unwrap_or(true)
            }
        },
    )
    .await;
    let metrics = a.registry.render();
    assert!(metrics.contains("reason=\"Killed\""), "{metrics}");
    a.client.delete("eg", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn a_sandbox_runs_at_most_its_quota_of_execs_at_once() {
    let env = env();
    let a = TestAgent::start(&env, "exec-quota", 2).await;
    sandbox(&a, &env, "eq").await;
    sandbox(&a, &env, "eo").await;
    let sleeper = |detach: bool| {
        let mut req = exec_request(&["sleep", "300"]);
        req.detach = detach;
        req
    };
    // A tenant's loop of detached execs: each keeps running without its
    // client, and holds its place.
    for _ in 1..MAX_EXECS_PER_SANDBOX {
        drop(a.client.exec("eq", &sleeper(true)).await.unwrap().unwrap());
    }
    let last = a.client.exec("eq", &sleeper(false)).await.unwrap().unwrap();
    let Err(e) = a.client.exec("eq", &sleeper(true)).await.unwrap() else {
        panic!(
            "exec {} of the sandbox was started",
            MAX_EXECS_PER_SANDBOX + 1
        );
    };
    assert_eq!(e.code, ErrorCode::CapacityExceeded, "{e:?}");
    assert!(
        e.message.contains(&MAX_EXECS_PER_SANDBOX.to_string()),
        "{e:?}"
    );
    // Another sandbox of the same agent is not held back.
    assert!(exec(&a.client, "eo", &["true"]).await.status.success());
    // An exec that ends gives its place back.
    drop(last);
    wait_for(
        "the place of an ended exec given back",
        Duration::from_secs(20),
        || {
            let a = &a;
            async move {
                matches!(
                    a.client.exec("eq", &exec_request(&["true"])).await,
                    Ok(Ok(_))
                )
            }
        },
    )
    .await;
    for uid in ["eq", "eo"] {
        a.client.delete(uid, 0).await.unwrap().1.unwrap();
    }
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn a_stalled_exec_is_ended_by_its_session_name() {
    // A client gone while its process ignores stdin: the stdin it sent fills
    // the stream's window, so the break of the stream never arrives; the
    // access server ends the exec by the name it gave it instead, and with
    // it everything the exec started.
    let env = env();
    let a = TestAgent::start(&env, "exec-session", 2).await;
    sandbox(&a, &env, "ss").await;
    // The sleep is the shell's child: ending the exec ends its whole tree.
    let mut req = exec_request(&["sh", "-c", "sleep 99999; echo never"]);
    req.stdin = true;
    req.session = Some("gw-1".into());
    let s = a.client.exec("ss", &req).await.unwrap().unwrap();
    let feeding = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..64 {
            if s.input.stdin(&chunk).await.is_err() {
                break;
            }
        }
        s
    });
    let mut twin = exec_request(&["true"]);
    twin.session = Some("gw-1".into());
    let Err(e) = a.client.exec("ss", &twin).await.unwrap() else {
        panic!("a second exec of the same session name was started");
    };
    assert_eq!(
        e.code,
        ErrorCode::InvalidArgument,
        "a name is used once: {e:?}"
    );
    let alive = || async {
        stdout(&exec(&a.client, "ss", &["ps", "-o", "args"]).await).contains("sleep 99999")
    };
    assert!(alive().await, "the exec runs");

    let end = |session: &'static str| {
        let c = a.client.clone();
        async move {
            c.send(
                http::Method::DELETE,
                &fast_sandbox_api::agent::exec_session_path("ss", session),
                None,
            )
            .await
            .unwrap()
            .status()
        }
    };
    assert_eq!(end("gw-2").await, StatusCode::NOT_FOUND);
    // A detached exec outlives its client by design: it takes no name.
    let mut detached = exec_request(&["sleep", "99998"]);
    detached.detach = true;
    detached.session = Some("gw-3".into());
    drop(a.client.exec("ss", &detached).await.unwrap().unwrap());
    assert_eq!(end("gw-3").await, StatusCode::NOT_FOUND);
    assert_eq!(end("gw-1").await, StatusCode::NO_CONTENT);
    wait_for("the ended exec killed", Duration::from_secs(20), || async {
        !alive().await
    })
    .await;
    assert_eq!(
        end("gw-1").await,
        StatusCode::NOT_FOUND,
        "forgotten once over"
    );
    feeding.abort();
    a.client.delete("ss", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn execs_share_the_sandbox_identity_and_limits() {
    let env = env();
    let a = TestAgent::start(&env, "exec-identity", 2).await;
    let mut req = request(&env, "ei", &["sleep", "100000"]);
    req.limits = ResourceLimits {
        // Room for runc's start helper of an exec (its threads count too)
        // and a few processes more.
        pids: Some(16),
        ..Default::default()
    };
    let info = a.client.create(&req).await.unwrap().1.unwrap();
    let main = std::fs::read_to_string(format!("/proc/{}/status", info.pid.unwrap())).unwrap();
    let fields = |status: &str| -> Vec<String> {
        status
            .lines()
            .filter(|l| {
                [
                    "Uid:",
                    "Gid:",
                    "CapEff:",
                    "CapBnd:",
                    "NoNewPrivs:",
                    "Seccomp:",
                ]
                .iter()
                .any(|p| l.starts_with(p))
            })
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    let o = exec(&a.client, "ei", &["cat", "/proc/self/status"]).await;
    assert_eq!(fields(&stdout(&o)), fields(&main));
    assert_eq!(fields(&main).len(), 6, "{main}");
    // Same cgroup as the sandbox's process, as seen from the host.
    let host_cgroup =
        std::fs::read_to_string(format!("/proc/{}/cgroup", info.pid.unwrap())).unwrap();
    let o = exec(&a.client, "ei", &["cat", "/proc/self/cgroup"]).await;
    let pids_line = |t: &str| t.lines().find(|l| l.contains(":pids:")).map(str::to_string);
    assert!(host_cgroup.contains("sandbox-ei"), "{host_cgroup}");
    assert_eq!(
        pids_line(&stdout(&o)).is_some(),
        pids_line(&host_cgroup).is_some()
    );
    // The pids limit counts exec'd processes: the main process and this
    // shell leave room for fewer than 24 more.
    let o = exec(
        &a.client,
        "ei",
        &[
            "sh",
            "-c",
            "for i in $(seq 24); do sleep 5 & done; echo done",
        ],
    )
    .await;
    assert!(
        stdout_of(&o.stderr).contains("fork"),
        "no fork failure: {o:?}"
    );
    a.client.delete("ei", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn errors_before_the_stream_name_the_sandbox_state() {
    let env = env();
    let a = TestAgent::start(&env, "exec-errors", 2).await;
    let e = a
        .client
        .exec("nope", &exec_request(&["true"]))
        .await
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(e.code, ErrorCode::NotFound);

    a.client
        .create(&request(&env, "done", &["sh", "-c", "exit 5"]))
        .await
        .unwrap()
        .1
        .unwrap();
    wait_for("sandbox done to exit", Duration::from_secs(20), || {
        let c = a.client.clone();
        async move { c.get("done").await.unwrap().unwrap().state == ContainerState::Exited }
    })
    .await;
    let resp = a
        .client
        .send(
            http::Method::POST,
            &fast_sandbox_api::agent::exec_path("done"),
            Some(Vec::new()),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "an empty body has no start frame"
    );
    let e = a
        .client
        .exec("done", &exec_request(&["true"]))
        .await
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(e.code, ErrorCode::SandboxNotRunning, "{e:?}");
    assert!(e.message.contains("exit code 5"), "{e:?}");
    assert_eq!(ErrorCode::SandboxNotRunning.http_status(), 409);

    sandbox(&a, &env, "run").await;
    let e = a
        .client
        .exec("run", &exec_request(&[]))
        .await
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::InvalidArgument, Some("command"))
    );
    a.client.delete("done", 0).await.unwrap().1.unwrap();
    a.client.delete("run", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}
