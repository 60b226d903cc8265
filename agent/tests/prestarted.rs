//! Pre-started sandboxes against a real containerd and runc: the same
//! requests run cold (no stock) and claimed (from the stock), and every
//! observable outcome must be the same: output of argv with spaces and
//! unicode, a large environment, a missing working directory or binary
//! (`StartFailed`), exit codes, limits (an OOM kill), isolation (the
//! capability, no-new-privileges and seccomp lines of `/proc/self/status`,
//! the network), exec and files. The stock stays invisible and refills.

mod support;

use std::time::Duration;

use fast_sandbox_api::agent::{
    ApiError, ContainerState, CreateSandboxRequest, ErrorCode, ResourceLimits, SandboxInfo,
    logs_path,
};
use fast_sandbox_api::sandbox::EnvVar;
use fast_sandbox_api::wellknown::reason;
use http::{Method, StatusCode};
use support::{Env, TestAgent, body_text, env, exec, noshell_image, request, stdout, wait_for};

/// What a create led to, as a client sees it.
#[derive(Debug, PartialEq)]
enum Outcome {
    Refused {
        code: ErrorCode,
        message: String,
    },
    Ran {
        exit_code: Option<i32>,
        reason: Option<String>,
        stdout: String,
        stderr: String,
    },
}

async fn logs(a: &TestAgent, uid: &str, stream: &str) -> String {
    let resp = a
        .client
        .send(
            Method::GET,
            &format!("{}?stream={stream}", logs_path(uid)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    body_text(resp).await
}

async fn wait_exited(a: &TestAgent, uid: &str) -> SandboxInfo {
    let mut last = None;
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let info = a.client.get(uid).await.unwrap().unwrap();
            if info.state == ContainerState::Exited {
                return info;
            }
            last = Some(info);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("sandbox {uid} did not exit in 30s: {last:?}"))
}

/// Runs `req` to its end on `a`; `claimed` says which path it must take.
async fn run(a: &TestAgent, req: &CreateSandboxRequest, claimed: bool) -> Outcome {
    if claimed {
        a.wait_stock(1).await;
    }
    let (_, answer) = a.client.create(req).await.unwrap();
    let info: Result<SandboxInfo, ApiError> = answer;
    let out = match info {
        Err(e) => Outcome::Refused {
            code: e.code,
            message: e.message,
        },
        Ok(info) => {
            assert_eq!(
                info.container_id.starts_with("stock-"),
                claimed,
                "{} path expected: {info:?}",
                if claimed { "claimed" } else { "cold" }
            );
            let info = wait_exited(a, &req.uid).await;
            Outcome::Ran {
                exit_code: info.exit_code,
                reason: info.reason,
                stdout: logs(a, &req.uid, "stdout").await,
                stderr: logs(a, &req.uid, "stderr").await,
            }
        }
    };
    if matches!(out, Outcome::Ran { .. }) {
        a.client.delete(&req.uid, 0).await.unwrap().1.unwrap();
    }
    out
}

/// A cold agent and a stocked one, side by side.
struct Both {
    cold: TestAgent,
    warm: TestAgent,
}

impl Both {
    async fn start(env: &Env, test: &str) -> Self {
        Self {
            cold: TestAgent::start(env, &format!("{test}-cold"), 4).await,
            warm: TestAgent::start_stocked(env, &format!("{test}-warm"), 4, 2).await,
        }
    }

    /// As [`Both::start`], with the stock of `image` instead of the test
    /// image.
    async fn start_for(env: &Env, test: &str, image: &str) -> Self {
        let warm = TestAgent::start_with(env, &format!("{test}-warm"), 4, |c| {
            c.stock_size = 2;
            c.stock_images = vec![image.to_string()];
        })
        .await;
        warm.wait_stock(2).await;
        Self {
            cold: TestAgent::start(env, &format!("{test}-cold"), 4).await,
            warm,
        }
    }

    /// Runs `req` both ways and returns the common outcome.
    async fn same(&self, req: CreateSandboxRequest) -> Outcome {
        let cold = run(&self.cold, &req, false).await;
        let warm = run(&self.warm, &req, true).await;
        assert_eq!(cold, warm, "cold and claimed differ for {:?}", req.command);
        cold
    }

    async fn finish(self) {
        self.cold.assert_nothing_left().await;
        self.warm.release_and_assert_nothing_left().await;
    }
}

fn ran_stdout(o: &Outcome) -> &str {
    match o {
        Outcome::Ran { stdout, .. } => stdout,
        other => panic!("expected a run, got {other:?}"),
    }
}

#[tokio::test]
async fn the_launch_message_is_honoured_exactly_as_the_cold_path() {
    let env = env();
    let both = Both::start(&env, "launch").await;

    let o = both
        .same(request(
            &env,
            "argv",
            &[
                "/bin/echo",
                "a b",
                "  two  spaces ",
                "héllo ✓ 世界",
                "$HOME",
            ],
        ))
        .await;
    assert_eq!(ran_stdout(&o), "a b   two  spaces  héllo ✓ 世界 $HOME\n");

    // Larger than a pipe's buffer, so the message goes in several writes.
    let mut big = request(
        &env,
        "bigenv",
        &[
            "sh",
            "-c",
            "env | sort | md5sum; env | wc -c; echo $VAR_499",
        ],
    );
    big.env = (0..500)
        .map(|i| EnvVar {
            name: format!("VAR_{i}"),
            value: format!("{i}-{}", "v".repeat(200)),
        })
        .collect();
    let o = both.same(big).await;
    assert!(
        ran_stdout(&o)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<usize>()
            .unwrap()
            > 100_000
    );

    let mut identity = request(
        &env,
        "identity",
        &[
            "sh",
            "-c",
            "echo pid=$$ home=$HOME; pwd; id; hostname; ulimit -n; ulimit -Hn; ls /proc/self/fd; env | sort",
        ],
    );
    identity.working_dir = Some("/tmp".into());
    identity.name = "identity-check".into();
    let o = both.same(identity).await;
    assert!(ran_stdout(&o).starts_with("pid=1 home=/\n/tmp\n"), "{o:?}");

    // runc makes a missing working directory; so does the init.
    let mut missing_dir = request(&env, "nodir", &["pwd"]);
    missing_dir.working_dir = Some("/no/such/dir".into());
    assert_eq!(ran_stdout(&both.same(missing_dir).await), "/no/such/dir\n");

    for (uid, argv) in [
        ("nobin", "/no/such/binary"),
        ("notinpath", "no-such-command"),
    ] {
        match both.same(request(&env, uid, &[argv])).await {
            Outcome::Refused { code, message } => {
                assert_eq!(code, ErrorCode::StartFailed);
                assert!(message.contains(argv), "{message}");
            }
            other => panic!("{argv}: expected StartFailed, got {other:?}"),
        }
    }

    for (uid, script, code) in [
        ("exit0", "exit 0", 0),
        ("exit3", "echo out; echo err >&2; exit 3", 3),
        ("exit255", "exit 255", 255),
        // PID 1 of its namespace: the kernel drops a SIGKILL it sends
        // itself, on both paths.
        ("selfkill", "kill -9 $$; echo survived", 0),
    ] {
        match both.same(request(&env, uid, &["sh", "-c", script])).await {
            Outcome::Ran { exit_code, .. } => assert_eq!(exit_code, Some(code), "{script}"),
            other => panic!("{script}: {other:?}"),
        }
    }
    both.finish().await;
}

#[tokio::test]
async fn a_missing_working_directory_is_made_as_root_for_a_non_root_user() {
    let env = env();
    let image = support::nonroot_image();
    let cold = TestAgent::start(&env, "nonroot-cold", 2).await;
    let pinned = image.clone();
    let warm = TestAgent::start_with(&env, "nonroot-warm", 2, |c| {
        c.stock_size = 1;
        c.stock_images = vec![pinned];
    })
    .await;
    let mut req = request(
        &env,
        "nonroot-nodir",
        &[
            "sh",
            "-c",
            "pwd; stat -c '%u:%g %a' .; id -u; touch x || echo read-only",
        ],
    );
    req.image = image;
    // Under `/`, which the user may not write: only root can make it.
    req.working_dir = Some("/made/for/you".into());
    let c = run(&cold, &req, false).await;
    let w = run(&warm, &req, true).await;
    assert_eq!(c, w, "cold and claimed differ");
    assert_eq!(
        ran_stdout(&c).lines().take(3).collect::<Vec<_>>(),
        ["/made/for/you", "0:0 755", "1000"]
    );
    assert!(ran_stdout(&c).ends_with("read-only\n"), "{c:?}");
    cold.assert_nothing_left().await;
    warm.release_and_assert_nothing_left().await;
}

#[tokio::test]
async fn limits_and_isolation_are_those_of_a_cold_sandbox() {
    let env = env();
    let both = Both::start(&env, "isolation").await;

    let mut limited = request(
        &env,
        "limits",
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory/memory.limit_in_bytes \
             /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us \
             /sys/fs/cgroup/cpu/cpu.shares",
        ],
    );
    limited.limits = ResourceLimits {
        cpu_millis: Some(250),
        memory_bytes: Some(64 << 20),
        pids: Some(16),
        ephemeral_storage_bytes: None,
    };
    let o = both.same(limited).await;
    assert_eq!(ran_stdout(&o), "16\n67108864\n25000\n100000\n1024\n");

    let unlimited = request(
        &env,
        "nolimits",
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.shares",
        ],
    );
    assert_eq!(ran_stdout(&both.same(unlimited).await), "-1\n1024\n");

    let status = request(
        &env,
        "status",
        &[
            "sh",
            "-c",
            "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; cat /proc/net/dev | cut -d: -f1",
        ],
    );
    let o = both.same(status).await;
    let out = ran_stdout(&o);
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");

    let mut oom = request(
        &env,
        "oom",
        &["sh", "-c", "x=0123456789; while true; do x=$x$x; done"],
    );
    oom.limits.memory_bytes = Some(16 << 20);
    match both.same(oom).await {
        Outcome::Ran {
            exit_code,
            reason: r,
            ..
        } => {
            assert_eq!(exit_code, Some(137));
            assert_eq!(r.as_deref(), Some(reason::OOM_KILLED));
        }
        other => panic!("{other:?}"),
    }
    both.finish().await;
}

#[tokio::test]
async fn exec_and_files_work_in_a_claimed_sandbox_as_in_a_cold_one() {
    let env = env();
    let both = Both::start(&env, "interactive").await;
    let mut req = request(&env, "shell", &["sleep", "600"]);
    req.env = vec![EnvVar {
        name: "FROM_REQUEST".into(),
        value: "yes".into(),
    }];
    req.working_dir = Some("/tmp".into());
    let mut outputs = Vec::new();
    for (a, claimed) in [(&both.cold, false), (&both.warm, true)] {
        if claimed {
            a.wait_stock(1).await;
        }
        let info = a.client.create(&req).await.unwrap().1.unwrap();
        assert_eq!(info.container_id.starts_with("stock-"), claimed);
        let o = support::exec(
            &a.client,
            "shell",
            &["sh", "-c", "env | sort; pwd; id; cat /proc/1/cmdline"],
        )
        .await;
        assert!(o.status.success());
        let body = fast_sandbox_server::body::full(bytes::Bytes::from_static(b"content"));
        a.client
            .write_file("shell", "/tmp/f.txt", None, body)
            .await
            .unwrap()
            .unwrap();
        let back = a
            .client
            .read_file("shell", "/tmp/f.txt")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back.bytes().await.unwrap(), b"content");
        outputs.push(support::stdout(&o));
        a.client.delete("shell", 0).await.unwrap().1.unwrap();
    }
    assert_eq!(outputs[0], outputs[1]);
    assert!(outputs[0].contains("FROM_REQUEST=yes"), "{}", outputs[0]);
    both.finish().await;
}

#[tokio::test]
async fn the_stock_is_invisible_refills_and_falls_back_when_empty() {
    let env = env();
    let a = TestAgent::start_stocked(&env, "refill", 8, 2).await;
    assert!(a.client.list().await.unwrap().unwrap().sandboxes.is_empty());
    assert_eq!(a.client.list().await.unwrap().unwrap().agent.slots_used, 0);
    // Three at once: two claims and one cold create.
    let reqs: Vec<_> = (0..3)
        .map(|i| request(&env, &format!("refill-{i}"), &["sleep", "600"]))
        .collect();
    let answers = futures::future::join_all(reqs.iter().map(|r| a.client.create(r))).await;
    let ids: Vec<String> = answers
        .into_iter()
        .map(|r| r.unwrap().1.unwrap().container_id)
        .collect();
    assert_eq!(
        ids.iter().filter(|i| i.starts_with("stock-")).count(),
        2,
        "{ids:?}"
    );
    let metrics = a.registry.render();
    assert!(
        metrics.contains("agent_stock_creates_total{path=\"claimed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("agent_stock_creates_total{path=\"empty\"} 1"),
        "{metrics}"
    );
    a.wait_stock(2).await;
    let list = a.client.list().await.unwrap().unwrap();
    assert_eq!(list.sandboxes.len(), 3);
    assert_eq!(list.agent.slots_used, 3);
    for r in &reqs {
        a.client.delete(&r.uid, 0).await.unwrap().1.unwrap();
    }
    // An image that is not warm goes cold, counted.
    let noshell = support::noshell_image();
    let mut other = request(&env, "refill-other", &["/tool", "sleep"]);
    other.image = noshell;
    let info = a.client.create(&other).await.unwrap().1.unwrap();
    assert!(!info.container_id.starts_with("stock-"));
    assert!(
        a.registry
            .render()
            .contains("agent_stock_creates_total{path=\"not_warm\"} 1")
    );
    a.client.delete("refill-other", 0).await.unwrap().1.unwrap();
    wait_for(
        "the stock of the newly warm image",
        Duration::from_secs(60),
        || {
            let a = a.agent.clone();
            async move { a.stock_ready() >= 4 }
        },
    )
    .await;
    a.release_and_assert_nothing_left().await;
}

/// The seccomp allow-list holds on both paths and in exec: `io_uring`,
/// `clone3`, an `AF_ALG` socket and a call no filter knows are refused, an
/// ordinary call is not (the probe is `/tool` of the image without a shell).
#[tokio::test]
async fn the_seccomp_allow_list_refuses_the_same_calls_cold_claimed_and_in_exec() {
    let env = env();
    let image = noshell_image();
    let both = Both::start_for(&env, "seccomp", &image).await;
    let probes = [
        ("getpid", "ok"),
        ("io_uring_setup", "EPERM"),
        ("clone3", "ENOSYS"),
        ("socket_alg", "EPERM"),
        ("1000", "ENOSYS"),
    ];
    for (i, (call, answer)) in probes.into_iter().enumerate() {
        let mut req = request(&env, &format!("seccomp-{i}"), &["/tool", "syscall", call]);
        req.image = image.clone();
        assert_eq!(
            ran_stdout(&both.same(req).await),
            format!("{answer}\n"),
            "{call}"
        );
    }
    let mut req = request(&env, "seccomp-exec", &["/tool", "sleep"]);
    req.image = image.clone();
    let c = &both.cold.client;
    c.create(&req).await.unwrap().1.unwrap();
    let o = exec(c, "seccomp-exec", &["/tool", "syscall", "io_uring_setup"]).await;
    assert_eq!(stdout(&o), "EPERM\n");
    assert_eq!(o.status.exit_code, Some(1));
    c.delete("seccomp-exec", 0).await.unwrap().1.unwrap();
    both.finish().await;
}

/// A stock built with a layer cap is claimed by creates asking for that
/// cap, whose root is then the capped tmpfs; other caps, and none, go cold.
/// Needs containerd 2.2 or later (the 1.6 leg checks the stock is refused).
#[tokio::test]
async fn a_capped_stock_serves_creates_of_its_cap_only() {
    let env = env();
    const CAP: u64 = 8 << 20;
    let image = env.image.clone();
    let a = TestAgent::start_with(&env, "capped-stock", 4, |c| {
        c.stock_size = 1;
        c.stock_images = vec![image];
        c.stock_layer_cap = Some(CAP);
    })
    .await;
    if std::env::var("FAST_SANDBOX_TEST_CONTAINERD").as_deref() == Ok("1.6") {
        // Every build is refused: no stock, and creates go cold.
        let info = a
            .client
            .create(&request(&env, "cs-none", &["true"]))
            .await
            .unwrap()
            .1
            .unwrap();
        assert!(!info.container_id.starts_with("stock-"));
        assert_eq!(a.agent.stock_ready(), 0);
        a.client.delete("cs-none", 0).await.unwrap().1.unwrap();
        a.release_and_assert_nothing_left().await;
        return;
    }
    let df = "df -k / | tail -1";
    let mut same = request(&env, "cs-same", &["sh", "-c", df]);
    same.limits.ephemeral_storage_bytes = Some(CAP);
    let claimed = run(&a, &same, true).await;
    let fields: Vec<String> = ran_stdout(&claimed)
        .split_whitespace()
        .skip(1)
        .take(1)
        .map(str::to_string)
        .collect();
    assert_eq!(
        fields,
        ["8196"],
        "the claimed root's size in KiB: {claimed:?}"
    );
    a.wait_stock(1).await;
    let mut other = request(&env, "cs-other", &["true"]);
    other.limits.ephemeral_storage_bytes = Some(CAP * 2);
    run(&a, &other, false).await;
    run(&a, &request(&env, "cs-none", &["true"]), false).await;
    assert!(
        a.registry
            .render()
            .contains("agent_stock_creates_total{path=\"ephemeral_storage\"} 2")
    );
    a.release_and_assert_nothing_left().await;
}

/// The controller retires an agent's stock before it deletes the agent's
/// pod (a restarted agent keeps its stock, so the agent cannot tell by
/// itself): every pre-started sandbox goes, none is built again, and
/// creates go cold.
#[tokio::test]
async fn a_retired_stock_is_removed_and_never_rebuilt() {
    let env = env();
    let a = TestAgent::start_stocked(&env, "retire", 4, 2).await;
    let released = a.client.release_stock().await.unwrap().unwrap();
    assert_eq!(released.removed, 2);
    assert_eq!(a.agent.stock_ready(), 0);
    let req = request(&env, "retired", &["sleep", "600"]);
    let info = a.client.create(&req).await.unwrap().1.unwrap();
    assert!(!info.container_id.starts_with("stock-"), "{info:?}");
    a.client.delete("retired", 0).await.unwrap().1.unwrap();
    let again = a.client.release_stock().await.unwrap().unwrap();
    assert_eq!(again.removed, 0, "a second retirement");
    a.assert_nothing_left().await;
}
