//! Egress on the real cluster. A sandbox asking for `network.mode: Egress`
//! reaches a server the test starts on this machine (node 1) at an address
//! outside every denied range, claimed from the stock and started cold
//! alike, with its exposed port still answering; it does not reach the
//! cluster's service range, its own agent pod (the agent's API), its node,
//! nor link-local (cloud metadata), not even when it allows them. Without
//! egress a sandbox has only its loopback.
//!
//! The one acting is a namespace `edit` tenant, whose malformed lists are
//! refused at admission naming the field and who cannot change a bound
//! sandbox's network; a user of another namespace can do nothing with it.

mod tenancy;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use fast_sandbox_api::{ExposedPort, Sandbox, SandboxPhase};
use fast_sandbox_e2e::scenario::{BUSYBOX, agent_pods};
use fast_sandbox_e2e::wait_for;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tenancy::{Cast, WAIT, pool, ready, refusal, run, running, sandbox, try_run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A documentation address (TEST-NET-2), outside every range the policy
/// denies: the test's server, in a network namespace of the test's own
/// linked to this machine (node 1), which routes pods' traffic to it.
const TEST_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 5);
/// This machine's end of the link to the test host.
const TEST_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 6);
const TEST_NETNS: &str = "fsb-e2e-egress-host";
/// This machine's end of the link.
const TEST_LINK: &str = "fsb-e2e-gw";
const GREETING: &str = "hello from the test host";
/// An image other than the pool's warm one: its first sandbox starts cold.
const COLD_IMAGE: &str = "docker.io/fast-sandbox/agent:dev";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's server, gone when dropped.
struct TestHost {
    port: u16,
    server: tokio::task::JoinHandle<()>,
}

impl TestHost {
    async fn start() -> Self {
        remove_test_host();
        ip(&["netns", "add", TEST_NETNS]);
        ip(&[
            "link", "add", TEST_LINK, "type", "veth", "peer", "name", "eth0", "netns", TEST_NETNS,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{TEST_GATEWAY}/30"),
            "dev",
            TEST_LINK,
        ]);
        ip(&["link", "set", TEST_LINK, "up"]);
        let inside = |args: &[&str]| ip(&[&["-n", TEST_NETNS], args].concat());
        inside(&["addr", "add", &format!("{TEST_HOST}/30"), "dev", "eth0"]);
        inside(&["link", "set", "eth0", "up"]);
        inside(&["link", "set", "lo", "up"]);
        inside(&["route", "add", "default", "via", &TEST_GATEWAY.to_string()]);
        // Bound by a thread inside the test host's namespace; the socket
        // stays there.
        let std_listener = std::thread::spawn(|| {
            let ns = std::fs::File::open(format!("/run/netns/{TEST_NETNS}")).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = std::net::TcpListener::bind(SocketAddr::from((TEST_HOST, 0))).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .join()
        .unwrap();
        let listener = TcpListener::from_std(std_listener).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = conn.read(&mut buf).await;
                    let body = format!("HTTP/1.0 200 OK\r\n\r\n{GREETING}\n");
                    let _ = conn.write_all(body.as_bytes()).await;
                });
            }
        });
        Self { port, server }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.server.abort();
        remove_test_host();
    }
}

/// Removes the test host of this or an earlier run: its link first (a
/// namespace's links go some time after the namespace).
fn remove_test_host() {
    let _ = Command::new("ip").args(["link", "del", TEST_LINK]).output();
    let _ = Command::new("ip")
        .args(["netns", "del", TEST_NETNS])
        .output();
}

fn with_network(mut sb: Sandbox, network: Value) -> Sandbox {
    sb.spec.network = Some(serde_json::from_value(network).unwrap());
    sb
}

/// Whether a TCP connection from sandbox `name` to `host:port` opens
/// (busybox `nc` runs its `-e` program only once connected).
async fn reaches(cast: &Cast, name: &str, host: &str, port: u16) -> bool {
    let probe = format!("nc -w 3 {host} {port} -e sh -c 'echo connected >&2' 2>&1");
    let (_, out) = run(&cast.tenant, &cast.ns, name, &["sh", "-c", &probe]).await;
    out.contains("connected")
}

/// What sandbox `name`'s HTTP request to the test host prints, errors
/// included (busybox's `wget` crashes; `nc` does not).
async fn fetch(cast: &Cast, name: &str, host: &TestHost) -> String {
    let probe = format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {TEST_HOST} {} 2>&1",
        host.port
    );
    run(&cast.tenant, &cast.ns, name, &["sh", "-c", &probe])
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_reaches_what_is_allowed_and_nothing_of_the_cluster() {
    let cast = Cast::new("egress", "e2e-egress").await;
    let host = TestHost::start().await;
    ready(
        &cast.tenant,
        &cast.admin,
        &cast.ns,
        pool("p", BUSYBOX, None),
    )
    .await;
    let agent = agent_pods(&cast.admin, &cast.ns, "p")
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("the pool's agent pod");
    let status = agent.status.clone().unwrap_or_default();
    let agent_ip = status.pod_ip.expect("the agent pod's IP");
    let node_ip = status.host_ip.expect("the agent pod's node IP");
    let sbx: Api<Sandbox> = Api::namespaced(cast.tenant.clone(), &cast.ns);
    let create = |sb: Sandbox| {
        let sbx = sbx.clone();
        async move { sbx.create(&PostParams::default(), &sb).await }
    };

    // Claimed from the stock (the pool's warm image), with an exposed port.
    let serve = "mkdir -p /tmp/w && echo hello > /tmp/w/i && exec httpd -f -p 8080 -h /tmp/w";
    let mut warm = with_network(
        sandbox("warm", BUSYBOX, &["/bin/sh", "-c", serve], None),
        json!({"mode": "Egress"}),
    );
    warm.spec.exposed_ports = vec![ExposedPort {
        name: Some("http".into()),
        port: 8080,
        ..Default::default()
    }];
    create(warm).await.unwrap();
    // Started cold (an image the agent has no stock of), allowing only the
    // test host.
    let only = format!("{TEST_HOST}/32");
    create(with_network(
        sandbox("cold", COLD_IMAGE, &["sleep", "3600"], None),
        json!({"mode": "Egress", "allow": [only]}),
    ))
    .await
    .unwrap();
    // Allowing the cluster's ranges, its node and link-local changes
    // nothing: the agent pod drops them.
    create(with_network(
        sandbox("greedy", BUSYBOX, &["sleep", "3600"], None),
        json!({"mode": "Egress", "allow": ["0.0.0.0/0", "10.0.0.0/8", format!("{node_ip}/32"), "169.254.0.0/16"]}),
    ))
    .await
    .unwrap();
    // No network asked: loopback only.
    create(sandbox("closed", BUSYBOX, &["sleep", "3600"], None))
        .await
        .unwrap();
    for name in ["warm", "cold", "greedy", "closed"] {
        running(&sbx, name).await;
    }

    for name in ["warm", "cold", "greedy"] {
        let got = fetch(&cast, name, &host).await;
        assert!(
            got.contains(GREETING),
            "{name} fetches from the test host: {got}"
        );
    }
    let got = fetch(&cast, "closed", &host).await;
    assert!(
        !got.contains(GREETING),
        "a sandbox without egress reached out: {got}"
    );
    let (_, links) = run(&cast.tenant, &cast.ns, "closed", &["ls", "/sys/class/net"]).await;
    assert_eq!(links.trim(), "lo", "only loopback without egress");
    let (_, links) = run(&cast.tenant, &cast.ns, "warm", &["ls", "/sys/class/net"]).await;
    assert_eq!(links.split_whitespace().collect::<Vec<_>>(), ["eth0", "lo"]);

    // What the cluster holds stays out of reach: the apiserver's Service,
    // the agent's own API, the node's apiserver and kubelet.
    let agent_port = fast_sandbox_api::agent::DEFAULT_PORT;
    for name in ["warm", "greedy"] {
        for (what, h, port) in [
            ("the apiserver Service", "10.96.0.1", 443),
            ("the agent's API", agent_ip.as_str(), agent_port),
            ("the node's apiserver", node_ip.as_str(), 6443),
            ("the node's kubelet", node_ip.as_str(), 10250),
        ] {
            assert!(
                !reaches(&cast, name, h, port).await,
                "{name} reached {what} at {h}:{port}"
            );
        }
    }
    // The only allowed destination is the test host.
    assert!(reaches(&cast, "cold", &TEST_HOST.to_string(), host.port).await);
    assert!(!reaches(&cast, "cold", "10.96.0.1", 443).await);
    // Cloud metadata has no route at all.
    let (code, _) = run(
        &cast.tenant,
        &cast.ns,
        "warm",
        &["ip", "route", "get", "169.254.169.254"],
    )
    .await;
    assert_ne!(code, 0, "169.254.169.254 is routed");
    // DNS: the agent pod's nameservers, nothing else of its resolv.conf.
    let (_, conf) = run(&cast.tenant, &cast.ns, "warm", &["cat", "/etc/resolv.conf"]).await;
    assert!(
        conf.lines().filter(|l| !l.starts_with('#')).all(|l| l
            .strip_prefix("nameserver ")
            .is_some_and(|ip| ip.parse::<Ipv4Addr>().is_ok())),
        "{conf}"
    );

    // The exposed port still answers, from outside the sandbox.
    let warm = wait_for(&sbx, "warm", WAIT, "an endpoint", |s: &Sandbox| {
        s.phase() == SandboxPhase::Running
            && s.status.as_ref().is_some_and(|st| !st.endpoints.is_empty())
    })
    .await
    .unwrap();
    let endpoint = warm.status.unwrap().endpoints[0].address.clone();
    let mut answer = String::new();
    // httpd binds a moment after it starts; nothing to watch but its answer.
    for _ in 0..100 {
        if let Ok(mut c) = TcpStream::connect(&endpoint).await {
            c.write_all(b"GET /i HTTP/1.0\r\n\r\n").await.unwrap();
            let mut got = String::new();
            let _ = c.read_to_string(&mut got).await;
            if got.ends_with("hello\n") {
                answer = got;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answer.ends_with("hello\n"), "GET {endpoint}: {answer:?}");

    // The tenant's malformed lists are refused naming the field.
    for (network, field) in [
        (
            json!({"mode": "Egress", "allow": ["10.0.0.1/8"]}),
            "spec.network.allow[0]",
        ),
        (
            json!({"mode": "Egress", "deny": ["fd00:ec2::254/128"]}),
            "spec.network.deny[0]",
        ),
        (
            json!({"mode": "None", "allow": ["1.2.3.0/24"]}),
            "spec.network.mode",
        ),
    ] {
        let msg = refusal(
            create(with_network(
                sandbox("bad", BUSYBOX, &["true"], None),
                network,
            ))
            .await
            .unwrap_err(),
        );
        assert!(msg.contains(field), "{field}: {msg}");
    }
    // ... and a bound sandbox's network is fixed.
    let open = Patch::Merge(json!({"spec": {"network": {"mode": "Egress"}}}));
    let msg = refusal(
        sbx.patch("closed", &PatchParams::default(), &open)
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("spec.network"), "{msg}");

    // Another namespace's user can neither use nor make one here.
    let err = try_run(&cast.stranger, &cast.ns, "warm", &["true"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("forbidden"), "{err}");
    let theirs: Api<Sandbox> = Api::namespaced(cast.stranger.clone(), &cast.ns);
    let msg = refusal(
        theirs
            .create(
                &PostParams::default(),
                &with_network(
                    sandbox("x", BUSYBOX, &["true"], None),
                    json!({"mode": "Egress"}),
                ),
            )
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("forbidden"), "{msg}");
    drop(host);
    cast.finish().await;
}
