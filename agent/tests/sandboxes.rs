//! The agent against a real containerd and runc, over real HTTPS with
//! mutual TLS. Run through `agent/tests/containerd.sh run -- cargo test -p
//! fast-sandbox-agent`; without it (or without root) every test fails.

mod support;

use std::time::Duration;

use fast_sandbox_api::agent::{
    ContainerState, ErrorCode, EventKind, ImageCacheReport, PATH_EVENTS, PATH_IMAGES,
    ResourceLimits, logs_path,
};
use fast_sandbox_api::sandbox::{EnvVar, ExposedPort};
use fast_sandbox_api::wellknown::reason;
use http::{Method, StatusCode};
use support::{TestAgent, body_text, env, read_events, request, wait_for};

async fn wait_exited(a: &TestAgent, uid: &str) -> fast_sandbox_api::agent::SandboxInfo {
    let mut last = None;
    for _ in 0..400 {
        let info = a.client.get(uid).await.unwrap().unwrap();
        if info.state == ContainerState::Exited {
            return info;
        }
        last = Some(info);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sandbox {uid} did not exit in 20s: {last:?}");
}

async fn logs(a: &TestAgent, uid: &str, query: &str) -> String {
    let resp = a
        .client
        .send(Method::GET, &format!("{}?{query}", logs_path(uid)), None)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    body_text(resp).await
}

#[tokio::test]
async fn runs_reports_exit_code_logs_and_events_then_deletes_everything() {
    let env = env();
    let a = TestAgent::start(&env, "run", 4).await;
    let events = a.client.send(Method::GET, PATH_EVENTS, None).await.unwrap();
    assert_eq!(events.status(), StatusCode::OK);

    let mut req = request(
        &env,
        "run-1",
        &["sh", "-c", "echo hello $GREETING; echo oops >&2; exit 3"],
    );
    req.env = vec![EnvVar {
        name: "GREETING".into(),
        value: "world".into(),
    }];
    let (status, info) = a.client.create(&req).await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    let info = info.unwrap();
    assert_eq!(info.container_id, "sandbox-run-1");
    assert!(matches!(
        info.state,
        ContainerState::Running | ContainerState::Exited
    ));

    let seen = read_events(events, Duration::from_secs(20), |evs| {
        evs.iter().any(|e| e.kind == EventKind::Exited)
    })
    .await;
    let kinds: Vec<_> = seen.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Started, EventKind::Exited], "{seen:?}");
    assert!(seen[0].seq < seen[1].seq);
    let exited = seen[1].sandbox.as_ref().unwrap();
    assert_eq!(exited.exit_code, Some(3));
    assert_eq!(exited.reason.as_deref(), Some(reason::ERROR));

    let info = wait_exited(&a, "run-1").await;
    assert_eq!(info.exit_code, Some(3));
    assert_eq!(logs(&a, "run-1", "").await, "hello world\n");
    assert_eq!(logs(&a, "run-1", "stream=stderr").await, "oops\n");

    let (status, deleted) = a.client.delete("run-1", 0).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted.unwrap().exit_code, Some(3));
    let (status, again) = a.client.delete("run-1", 0).await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(again.unwrap_err().code, ErrorCode::NotFound);
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn follows_logs_until_the_process_exits() {
    let env = env();
    let a = TestAgent::start(&env, "follow", 2).await;
    let req = request(
        &env,
        "follow-1",
        &[
            "sh",
            "-c",
            "for i in 1 2 3; do echo line$i; sleep 0.3; done",
        ],
    );
    a.client.create(&req).await.unwrap().1.unwrap();
    let text = logs(&a, "follow-1", "follow=true").await;
    assert_eq!(text, "line1\nline2\nline3\n");
    a.client.delete("follow-1", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

/// A sandbox printing far past the cap keeps its newest output only, and
/// the file on the node's disk stays within the cap.
#[tokio::test]
async fn logs_past_the_cap_keep_the_newest_output_within_the_cap() {
    let env = env();
    let cap = 256 << 10;
    let a = TestAgent::start_with(&env, "logcap", 2, |c| c.log_max_bytes = cap).await;
    // About 2 MB of numbered lines, then a marker; it stays running.
    let script = "i=0; while [ $i -lt 40000 ]; do echo line-$i-0123456789012345678901234567890123456789; i=$((i+1)); done; echo end-of-output; sleep 3600";
    let req = request(&env, "logcap-1", &["sh", "-c", script]);
    let info = a.client.create(&req).await.unwrap().1.unwrap();
    let file = a.log_dir().join(format!("{}.stdout", info.container_id));
    wait_for(
        "the output to end and the file to be capped",
        Duration::from_secs(60),
        || {
            let file = file.clone();
            async move {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                text.ends_with("end-of-output\n") && (text.len() as u64) <= cap
            }
        },
    )
    .await;
    let text = logs(&a, "logcap-1", "").await;
    assert!(text.ends_with("line-39999-0123456789012345678901234567890123456789\nend-of-output\n"));
    assert!(!text.contains("line-0-"), "the oldest output was dropped");
    assert!(
        text.len() as u64 >= cap / 4,
        "about the newest half is kept: {}",
        text.len()
    );
    a.client.delete("logcap-1", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn memory_limit_oom_kills_and_is_reported() {
    let env = env();
    let a = TestAgent::start(&env, "oom", 2).await;
    let events = a.client.send(Method::GET, PATH_EVENTS, None).await.unwrap();
    let mut req = request(
        &env,
        "oom-1",
        &["sh", "-c", "x=0123456789; while true; do x=$x$x; done"],
    );
    req.limits = ResourceLimits {
        memory_bytes: Some(16 << 20),
        ..Default::default()
    };
    a.client.create(&req).await.unwrap().1.unwrap();
    let seen = read_events(events, Duration::from_secs(30), |evs| {
        evs.iter().any(|e| e.kind == EventKind::OomKilled)
    })
    .await;
    let oom = seen
        .iter()
        .find(|e| e.kind == EventKind::OomKilled)
        .unwrap();
    let info = oom.sandbox.as_ref().unwrap();
    assert_eq!(info.reason.as_deref(), Some(reason::OOM_KILLED));
    assert_eq!(info.exit_code, Some(137));
    let info = wait_exited(&a, "oom-1").await;
    assert_eq!(info.reason.as_deref(), Some(reason::OOM_KILLED));
    a.client.delete("oom-1", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn a_capped_writable_layer_holds_its_cap_and_fails_the_sandbox_past_it() {
    let env = env();
    let a = TestAgent::start(&env, "layer", 4).await;
    let capped = |uid: &str, script: &str| {
        let mut r = request(&env, uid, &["sh", "-c", script]);
        r.limits.ephemeral_storage_bytes = Some(8 << 20);
        r
    };
    let within = capped(
        "layer-in",
        "dd if=/dev/zero of=/four bs=1M count=4 2>/dev/null && df -k / | tail -1 && df -i / | tail -1 && echo wrote; sleep 300",
    );
    let (status, info) = a.client.create(&within).await.unwrap();
    if std::env::var("FAST_SANDBOX_TEST_CONTAINERD").as_deref() == Ok("1.6") {
        // containerd 1.6 has no mount manager: refused, naming the field.
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let e = info.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert_eq!(e.field.as_deref(), Some("limits.ephemeralStorageBytes"));
        assert!(e.message.contains("containerd 2.2"), "{}", e.message);
        a.assert_nothing_left().await;
        return;
    }
    assert_eq!(status, StatusCode::CREATED, "{info:?}");
    let past = capped(
        "layer-past",
        "dd if=/dev/zero of=/big bs=1M count=64; sleep 300",
    );
    a.client.create(&past).await.unwrap().1.unwrap();
    let (dead, out) = (
        wait_exited(&a, "layer-past").await,
        logs(&a, "layer-past", "stream=stdout").await,
    );
    assert_eq!(
        dead.reason.as_deref(),
        Some(reason::EPHEMERAL_STORAGE_EXCEEDED),
        "{out}"
    );
    assert_eq!(dead.exit_code, Some(137));
    // Within the cap: 4 MiB written on an 8 MiB (+ one page) tmpfs, and
    // still running after the sandbox past its cap was killed.
    let out = logs(&a, "layer-in", "stream=stdout").await;
    assert!(out.ends_with("wrote\n"), "{out}");
    let df: Vec<u64> = out
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .take(2)
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(df, [8196, 4096], "size and use in KiB: {out}");
    let inodes = out.lines().nth(1).and_then(|l| l.split_whitespace().nth(1));
    assert_eq!(
        inodes,
        Some("2049"),
        "one inode per page of the layer: {out}"
    );
    let info = a.client.get("layer-in").await.unwrap().unwrap();
    assert_eq!(info.state, ContainerState::Running);
    for uid in ["layer-in", "layer-past"] {
        a.client.delete(uid, 0).await.unwrap().1.unwrap();
    }
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn pids_limit_stops_fork_bombs() {
    let env = env();
    let a = TestAgent::start(&env, "pids", 2).await;
    let mut req = request(
        &env,
        "pids-1",
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; echo forked",
        ],
    );
    req.limits = ResourceLimits {
        pids: Some(4),
        ..Default::default()
    };
    a.client.create(&req).await.unwrap().1.unwrap();
    wait_exited(&a, "pids-1").await;
    let out = logs(&a, "pids-1", "").await;
    let err = logs(&a, "pids-1", "stream=stderr").await;
    assert!(out.starts_with("4\n"), "stdout: {out:?}");
    assert!(err.contains("fork"), "no fork failure in stderr: {err:?}");
    a.client.delete("pids-1", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

fn host_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9")
        .or_else(|_| s.connect("10.255.255.1:9"))
        .ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn sandbox_has_only_loopback_and_cannot_reach_the_agent() {
    let env = env();
    let a = TestAgent::start(&env, "isolation", 2).await;
    // The mTLS API.
    let ports = [a.addr.port()];
    let mut targets = vec!["127.0.0.1".to_string()];
    if let Some(ip) = host_ip() {
        targets.push(ip.to_string());
    }
    let script = format!(
        "grep -c : /proc/net/dev; for t in {}; do for p in {}; do if nc -w 2 $t $p </dev/null; then echo reached $t:$p; else echo blocked $t:$p; fi; done; done",
        targets.join(" "),
        ports.map(|p| p.to_string()).join(" ")
    );
    let req = request(&env, "iso-1", &["sh", "-c", &script]);
    a.client.create(&req).await.unwrap().1.unwrap();
    wait_exited(&a, "iso-1").await;
    let out = logs(&a, "iso-1", "").await;
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("1"),
        "more than loopback in the sandbox: {out}"
    );
    for t in &targets {
        for p in ports {
            assert!(
                out.contains(&format!("blocked {t}:{p}")),
                "sandbox reached {t}:{p}: {out}"
            );
        }
    }
    a.client.delete("iso-1", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn create_is_idempotent_by_uid_and_capacity_is_enforced() {
    let env = env();
    let a = TestAgent::start(&env, "slots", 1).await;
    let req = request(&env, "slot-1", &["sleep", "300"]);
    let (s1, first) = a.client.create(&req).await.unwrap();
    let (s2, second) = a.client.create(&req).await.unwrap();
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.container_id, second.container_id);
    assert_eq!(second.state, ContainerState::Running);
    // The sandbox's cgroup nests under the agent's parent, on the host.
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", second.pid.unwrap())).unwrap();
    // The memory hierarchy's line on cgroup v1, the only line on v2.
    let memory = (cgroup.lines().find(|l| l.contains(":memory:")))
        .or_else(|| cgroup.lines().find(|l| l.starts_with("0::")))
        .unwrap_or_else(|| panic!("no memory cgroup in {cgroup}"));
    assert!(
        memory.ends_with(&format!("{}/sandbox-slot-1", support::CGROUP_PARENT)),
        "{cgroup}"
    );

    let mut other_image = req.clone();
    other_image.image = "docker.io/library/other:1".into();
    let (status, conflict) = a.client.create(&other_image).await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(conflict.unwrap_err().code, ErrorCode::Conflict);

    let (status, full) = a
        .client
        .create(&request(&env, "slot-2", &["true"]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(full.unwrap_err().code, ErrorCode::CapacityExceeded);
    let list = a.client.list().await.unwrap().unwrap();
    assert_eq!((list.agent.slots_used, list.agent.slots_total), (1, 1));
    assert_eq!(list.sandboxes.len(), 1);

    // A delete frees the slot; the sleeping process gets SIGKILL after the grace period.
    a.client.delete("slot-1", 1).await.unwrap().1.unwrap();
    let (status, _) = a
        .client
        .create(&request(&env, "slot-2", &["true"]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED);
    a.client.delete("slot-2", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn a_create_whose_caller_goes_away_still_starts_the_sandbox() {
    let env = env();
    let a = TestAgent::start(&env, "cut", 4).await;
    // Cut a call once its container exists and before it runs (the stream
    // is reset, as when a controller dies mid-create). The window is runc's
    // create and start; a stalled machine may miss it, so a few tries.
    let mut cut = None;
    for n in 0..4 {
        let uid = format!("cut-{n}");
        let req = request(&env, &uid, &["sleep", "300"]);
        let client = a.client.clone();
        let call = tokio::spawn(async move { client.create(&req).await });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let state = loop {
            if let Ok(Ok(info)) = a.client.get(&uid).await {
                break info.state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the create of {uid} never made its container"
            );
            tokio::task::yield_now().await;
        };
        call.abort();
        let _ = call.await;
        if state == ContainerState::Created {
            cut = Some(uid);
            break;
        }
    }
    let uid = cut.expect("no create was caught between its container and its start");
    wait_for(
        "the cut create's sandbox Running",
        Duration::from_secs(20),
        || async { a.client.get(&uid).await.unwrap().unwrap().state == ContainerState::Running },
    )
    .await;
    // A retried create finds it, as a new controller leader's would.
    let (status, info) = a
        .client
        .create(&request(&env, &uid, &["sleep", "300"]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info.unwrap().state, ContainerState::Running);
    for s in a.client.list().await.unwrap().unwrap().sandboxes {
        a.client.delete(&s.uid, 0).await.unwrap().1.unwrap();
    }
    a.assert_nothing_left().await;
}

/// A create cut by its agent's death may leave its snapshot prepare in
/// containerd's queue, to land after the restarted agent swept its
/// leftovers (the agent-killed-mid-burst test found it): the retried create
/// replaces that snapshot instead of failing on it.
#[tokio::test]
async fn a_snapshot_a_killed_create_left_is_replaced() {
    let env = env();
    let a = TestAgent::start(&env, "late-prepare", 2).await;
    let image = fast_sandbox_agent::image::ImageCache::new()
        .resolve(&a.cd, &fast_sandbox_api::image::normalize(&env.image))
        .await
        .unwrap();
    let key = format!(
        "fast-sandbox/{}/{}",
        a.agent.config().pod_uid,
        fast_sandbox_agent::Agent::container_id("late", 0)
    );
    a.cd.prepare_snapshot(&key, &image.chain_id, None, Default::default())
        .await
        .unwrap();
    let info = a
        .client
        .create(&request(&env, "late", &["sleep", "300"]))
        .await
        .unwrap()
        .1
        .unwrap();
    assert_eq!(info.state, ContainerState::Running);
    a.client.delete("late", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn a_new_reset_revision_replaces_the_container() {
    let env = env();
    let a = TestAgent::start(&env, "reset", 1).await;
    let mut req = request(&env, "reset-1", &["sleep", "300"]);
    let first = a.client.create(&req).await.unwrap().1.unwrap();
    req.reset_revision = 1;
    let (status, second) = a.client.create(&req).await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    let second = second.unwrap();
    assert_ne!(first.container_id, second.container_id);
    assert_eq!(second.reset_revision, 1);
    a.client.delete("reset-1", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named() {
    let env = env();
    let a = TestAgent::start(&env, "bad", 2).await;
    let cases: Vec<(fast_sandbox_api::agent::CreateSandboxRequest, &str)> = vec![
        (request(&env, "bad-1", &["", "x"]), "command[0]"),
        (
            {
                let mut r = request(&env, "bad-2", &["true"]);
                r.env = vec![EnvVar {
                    name: "1BAD=".into(),
                    value: "x".into(),
                }];
                r
            },
            "env[0].name",
        ),
        (
            {
                let mut r = request(&env, "bad-3", &["true"]);
                r.limits.memory_bytes = Some(1);
                r
            },
            "limits.memory",
        ),
        (
            {
                let mut r = request(&env, "bad-4", &["true"]);
                r.limits.pids = Some(0);
                r
            },
            "limits.pids",
        ),
        (
            {
                let mut r = request(&env, "bad-5", &["true"]);
                r.limits.cpu_millis = Some(u64::MAX);
                r
            },
            "limits.cpu",
        ),
        (
            {
                let mut r = request(&env, "bad-6", &["true"]);
                r.uid = "../etc".into();
                r
            },
            "uid",
        ),
        (
            {
                let mut r = request(&env, "bad-7", &["true"]);
                r.working_dir = Some("relative".into());
                r
            },
            "workingDir",
        ),
    ];
    for (req, field) in cases {
        let (status, answer) = a.client.create(&req).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}");
        let e = answer.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert_eq!(e.field.as_deref(), Some(field), "{e:?}");
    }
    let (status, answer) = a
        .client
        .call::<serde_json::Value>(Method::POST, "/v1/sandboxes", Some(b"{not json".to_vec()))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.unwrap_err().field.as_deref(), Some("body"));

    let mut missing = request(&env, "bad-8", &["true"]);
    missing.image = "docker.io/fast-sandbox/not-here:1".into();
    let (status, answer) = a.client.create(&missing).await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.unwrap_err().code, ErrorCode::ImageNotPresent);

    // A command that is not there: refused for good, and nothing is kept.
    let (status, answer) = a
        .client
        .create(&request(&env, "bad-9", &["/no/such/binary"]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let e = answer.unwrap_err();
    assert_eq!(e.code, ErrorCode::StartFailed, "{e:?}");
    assert!(e.message.contains("/no/such/binary"), "{e:?}");

    // Nothing crashed and no slot leaked: a valid create still works.
    let list = a.client.list().await.unwrap().unwrap();
    assert_eq!(list.agent.slots_used, 0);
    let (status, _) = a
        .client
        .create(&request(&env, "good", &["true"]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED);
    a.client.delete("good", 0).await.unwrap().1.unwrap();
    let metrics = a.registry.render();
    assert!(metrics.contains("code=\"InvalidArgument\""), "{metrics}");
    assert!(metrics.contains("stage=\"task_start\""), "{metrics}");
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn only_named_clients_of_the_fast_sandbox_ca_get_in() {
    let env = env();
    let a = TestAgent::start(&env, "mtls", 1).await;
    // A certificate of the right CA with another name (a leaked webhook
    // certificate, say) is refused by name, with the reason.
    let stranger = fast_sandbox_agent::client::AgentClient::connect(
        a.addr,
        support::SERVER_NAME,
        a.pki.client("fast-sandbox-webhook.fast-sandbox-system.svc"),
    )
    .await
    .expect("a certificate of the CA passes the handshake");
    let refused = stranger.list().await.unwrap().unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unauthenticated);
    assert!(
        refused.message.contains("fast-sandbox-controller"),
        "{}",
        refused.message
    );
    let gateway = fast_sandbox_agent::client::AgentClient::connect(
        a.addr,
        support::SERVER_NAME,
        a.pki.client("fast-sandbox-gateway"),
    )
    .await
    .unwrap();
    assert!(
        gateway.list().await.unwrap().is_ok(),
        "the access server gets in"
    );
    let no_cert = fast_sandbox_server::tls::client_config(&a.pki.ca(), None).unwrap();
    let other_ca = support::Pki::new("Some other CA");
    let foreign = {
        let (c, k) = other_ca.issue("intruder", &[]);
        fast_sandbox_server::tls::client_config(&a.pki.ca(), Some((&c, &k))).unwrap()
    };
    for (what, tls) in [
        ("no certificate", no_cert),
        ("foreign certificate", foreign),
    ] {
        let refused = match fast_sandbox_agent::client::AgentClient::connect(
            a.addr,
            support::SERVER_NAME,
            tls,
        )
        .await
        {
            Err(_) => true,
            Ok(c) => c.list().await.is_err(),
        };
        assert!(refused, "a client with {what} got in");
    }
    assert!(a.client.list().await.unwrap().is_ok());
}

#[tokio::test]
async fn image_report_lists_the_cache_with_last_use() {
    let env = env();
    let a = TestAgent::start(&env, "images", 1).await;
    a.client
        .create(&request(&env, "img-1", &["true"]))
        .await
        .unwrap()
        .1
        .unwrap();
    let (status, report) = a
        .client
        .call::<ImageCacheReport>(Method::GET, PATH_IMAGES, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let report = report.unwrap();
    assert_eq!(report.namespace, env.namespace);
    let img = report
        .images
        .iter()
        .find(|i| i.name == env.image)
        .expect("test image listed");
    assert_eq!(img.normalized, env.image);
    assert!(img.digest.starts_with("sha256:"));
    assert!(img.size_bytes > 500_000, "size {}", img.size_bytes);
    assert!(img.last_used.is_some());
    a.client.delete("img-1", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}

#[tokio::test]
async fn warm_snapshots_are_used_and_cleaned_up() {
    let env = env();
    let a = TestAgent::start_with(&env, "warm", 2, |c| c.warm_snapshots = 1).await;
    a.client
        .create(&request(&env, "warm-1", &["true"]))
        .await
        .unwrap()
        .1
        .unwrap();
    let prefix = format!("fast-sandbox/{}/warm-", a.agent.config().pod_uid);
    let cd = a.cd.clone();
    let p = prefix.clone();
    wait_for("a warm snapshot", Duration::from_secs(10), move || {
        let cd = cd.clone();
        let p = p.clone();
        async move { !cd.snapshot_keys(&p).await.unwrap().is_empty() }
    })
    .await;
    a.client
        .create(&request(&env, "warm-2", &["true"]))
        .await
        .unwrap()
        .1
        .unwrap();
    a.client.delete("warm-1", 0).await.unwrap().1.unwrap();
    a.client.delete("warm-2", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
    a.agent.release_warm().await;
    assert!(a.cd.snapshot_keys(&prefix).await.unwrap().is_empty());
}

/// An exposed port is reachable at the endpoint the agent reports, the
/// sandbox keeps its loopback-only namespace, and the forwarding ends with
/// the sandbox.
#[tokio::test]
async fn exposed_port_is_forwarded_from_the_reported_endpoint() {
    let env = env();
    let a = TestAgent::start(&env, "ports", 2).await;
    let mut req = request(
        &env,
        "web-1",
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/w && echo hello > /tmp/w/i && exec httpd -f -p 127.0.0.1:8080 -h /tmp/w",
        ],
    );
    req.exposed_ports = vec![ExposedPort {
        name: Some("http".into()),
        port: 8080,
        ..Default::default()
    }];
    let info = a.client.create(&req).await.unwrap().1.unwrap();
    assert_eq!(info.endpoints.len(), 1, "{info:?}");
    assert_eq!(info.endpoints[0].name.as_deref(), Some("http"));
    let addr: std::net::SocketAddr = info.endpoints[0].address.parse().unwrap();

    // httpd binds a moment after the process starts: nothing to watch for
    // but the answer itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Some(a) = support::http_get(addr, "/i").await {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing answered at {addr} for 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answer.starts_with("HTTP/1."), "{answer}");
    assert!(answer.ends_with("hello\n"), "{answer}");

    a.client.delete("web-1", 0).await.unwrap().1.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "{addr} still accepts after the sandbox was deleted"
    );
    a.assert_nothing_left().await;
}
