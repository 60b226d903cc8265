//! Egress against real containerd and runc. The agent runs in a network
//! namespace of its own, as in its pod: the test re-runs itself under
//! `unshare --net`, where a second namespace plays the world outside the
//! pod with a server on it. A sandbox with egress reaches that server,
//! cold and claimed from the stock; its `deny` list, the operator's ranges
//! and the agent itself stay out of reach; its link goes with it.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;

use fast_sandbox_agent::client::AgentClient;
use fast_sandbox_agent::egress::EgressConfig;
use fast_sandbox_api::agent::CreateSandboxRequest;
use fast_sandbox_api::network::SandboxNetwork;
use support::binary::{Fixture, fixture, spawn, wait_ready};
use support::*;

/// The outside world's end of the pod's link, and the pod's.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const POD: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// An address of the operator's denied range, also the outside's.
const DENIED_HOST: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
const GREETING: &str = "hello from outside the pod";
/// The tests that run inside a network namespace of their own.
const INNER: [&str; 2] = [
    "egress_inside_a_pod_network_namespace",
    "egress_links_outlive_an_agent_restart",
];

#[test]
fn egress_from_an_agent_in_a_network_namespace_of_its_own() {
    for inner in INNER {
        let exe = std::env::current_exe().unwrap();
        let out = Command::new("unshare")
            .arg("--net")
            .arg("--")
            .arg(&exe)
            .args([inner, "--exact", "--ignored", "--nocapture"])
            .output()
            .expect("unshare runs (util-linux)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{inner} failed in its namespace:\n{text}"
        );
        assert!(text.contains("1 passed"), "{inner} did not run:\n{text}");
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace beyond the pod's, linked to it, with an HTTP server at
/// `OUTSIDE:port`; removed when dropped.
struct Outside {
    name: String,
    port: u16,
}

impl Outside {
    fn start() -> Self {
        let name = format!("fsb-test-outside-{}", std::process::id());
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", "fsbpod0", "type", "veth", "peer", "name", "fsbout0", "netns", &name,
        ]);
        ip(&["addr", "add", &format!("{POD}/30"), "dev", "fsbpod0"]);
        ip(&["link", "set", "fsbpod0", "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{OUTSIDE}/30"),
            "dev",
            "fsbout0",
        ]);
        ip(&["-n", &name, "link", "set", "fsbout0", "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        // The outside also answers at an address of the operator's denied
        // range, so only the pod's ruleset keeps a sandbox from it.
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{DENIED_HOST}/32"),
            "dev",
            "fsbout0",
        ]);
        ip(&["route", "add", "default", "via", &OUTSIDE.to_string()]);
        // A way back to sandboxes that does not need the pod's NAT.
        let links = fast_sandbox_agent::egress::plan::LINK_RANGE.to_string();
        ip(&["-n", &name, "route", "add", &links, "via", &POD.to_string()]);
        // The listener is made inside the outside namespace by a thread
        // that enters it; the socket stays there.
        let path = format!("/run/netns/{name}");
        let listener = std::thread::spawn(move || {
            let ns = std::fs::File::open(path).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).unwrap()
        })
        .join()
        .unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 512];
                let _ = conn.read(&mut buf);
                let _ = write!(conn, "HTTP/1.0 200 OK\r\n\r\n{GREETING}\n");
            }
        });
        Self { name, port }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn egress(allow: &[&str], deny: &[&str]) -> Option<SandboxNetwork> {
    Some(SandboxNetwork {
        mode: fast_sandbox_api::NetworkMode::Egress,
        allow: allow.iter().map(|s| s.to_string()).collect(),
        deny: deny.iter().map(|s| s.to_string()).collect(),
    })
}

fn sleeper(env: &Env, uid: &str, network: Option<SandboxNetwork>) -> CreateSandboxRequest {
    CreateSandboxRequest {
        network,
        ..request(env, uid, &["sleep", "300"])
    }
}

/// What the sandbox's HTTP request to `host:port` prints (busybox `nc`;
/// its `wget` crashes), errors included.
async fn fetch(a: &TestAgent, uid: &str, host: Ipv4Addr, port: u16) -> String {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port} 2>&1");
    stdout(&exec(&a.client, uid, &["sh", "-c", &script]).await)
}

/// Whether a TCP connection from the sandbox to `host:port` opens.
async fn connects(a: &TestAgent, uid: &str, host: Ipv4Addr, port: u16) -> bool {
    let script = format!("nc -w 3 {host} {port} -e sh -c 'echo connected >&2' 2>&1");
    stdout(&exec(&a.client, uid, &["sh", "-c", &script]).await).contains("connected")
}

#[tokio::test]
#[ignore = "run by egress_from_an_agent_in_a_network_namespace_of_its_own, inside a network namespace of its own"]
async fn egress_inside_a_pod_network_namespace() {
    ip(&["link", "set", "lo", "up"]);
    let outside = Outside::start();
    let env = env();
    let resolv = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(resolv.path(), "search x.svc\nnameserver 10.0.0.53\n").unwrap();
    let image = env.image.clone();
    let a = TestAgent::start_with(&env, "egress", 8, |c| {
        c.egress = Some(EgressConfig {
            nft: "nft".into(),
            denied: vec!["10.0.0.0/8".parse().unwrap()],
            resolv_conf: resolv.path().to_path_buf(),
            sysctl_net: "/proc/sys/net".into(),
        });
        c.stock_size = 2;
        c.stock_images = vec![image];
    })
    .await;
    a.wait_stock(2).await;

    // Claimed from the stock, twice; cold, from an image it has no stock
    // of (the test image run as another user).
    for uid in ["claimed", "stocked", "cold"] {
        let mut req = sleeper(&env, uid, egress(&[], &[]));
        if uid == "cold" {
            req.image = nonroot_image();
        }
        let info = a.client.create(&req).await.unwrap().1.unwrap();
        assert_eq!(info.state, fast_sandbox_api::agent::ContainerState::Running);
    }
    for uid in ["claimed", "stocked", "cold"] {
        let got = fetch(&a, uid, OUTSIDE, outside.port).await;
        assert!(got.contains(GREETING), "{uid}: {got}");
        let conf = stdout(&exec(&a.client, uid, &["cat", "/etc/resolv.conf"]).await);
        assert!(conf.ends_with("nameserver 10.0.0.53\n"), "{conf}");
        assert!(!conf.contains("search"), "{conf}");
    }

    // Its own deny list: refused at once, no packet leaves.
    a.client
        .create(&sleeper(&env, "denied", egress(&[], &["198.51.100.0/24"])))
        .await
        .unwrap()
        .1
        .unwrap();
    let got = fetch(&a, "denied", OUTSIDE, outside.port).await;
    assert!(got.contains("No route to host"), "{got}");
    // The operator's ranges and the agent itself, even when allowed: the
    // pod's nftables table drops them until the timeout.
    a.client
        .create(&sleeper(
            &env,
            "greedy",
            egress(&["0.0.0.0/0", "10.0.0.0/8", "198.51.100.1/32"], &[]),
        ))
        .await
        .unwrap()
        .1
        .unwrap();
    for (host, port) in [(DENIED_HOST, outside.port), (POD, a.addr.port())] {
        assert!(
            !connects(&a, "greedy", host, port).await,
            "greedy reached {host}:{port}"
        );
    }
    // ... which is what kept them out: without it, the outside answers.
    let _ = Command::new("nft")
        .args([
            "delete",
            "table",
            "ip",
            fast_sandbox_agent::egress::plan::TABLE,
        ])
        .output();
    let got = fetch(&a, "greedy", DENIED_HOST, outside.port).await;
    assert!(
        got.contains(GREETING),
        "the outside unreachable without the ruleset: {got}"
    );
    assert!(
        connects(&a, "greedy", POD, a.addr.port()).await,
        "the probe cannot tell a connection"
    );
    // Without egress: loopback only.
    a.client
        .create(&sleeper(&env, "closed", None))
        .await
        .unwrap()
        .1
        .unwrap();
    assert!(!connects(&a, "closed", OUTSIDE, outside.port).await);
    let links = stdout(&exec(&a.client, "closed", &["ls", "/sys/class/net"]).await);
    assert_eq!(links.trim(), "lo");

    // A link goes with its sandbox.
    let link = fast_sandbox_agent::egress::plan::link_name("cold");
    let has_link = || {
        Command::new("ip")
            .args(["link", "show", &link])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(has_link(), "{link} while cold runs");
    let sysctl = |path: String| std::fs::read_to_string(path).unwrap().trim().to_string();
    assert_eq!(
        sysctl(format!("/proc/sys/net/ipv4/conf/{link}/rp_filter")),
        "1"
    );
    assert_eq!(
        sysctl(format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6")),
        "1"
    );
    a.client.delete("cold", 0).await.unwrap().1.unwrap();
    wait_for(
        "the sandbox's link gone",
        std::time::Duration::from_secs(10),
        || {
            let gone = !has_link();
            async move { gone }
        },
    )
    .await;
    for s in a.client.list().await.unwrap().unwrap().sandboxes {
        a.client.delete(&s.uid, 0).await.unwrap().1.unwrap();
    }
    a.release_and_assert_nothing_left().await;
}

/// The agent binary, killed with egress sandboxes running and started
/// again: their links stay theirs, a link an attach left half made is
/// removed, and a new sandbox gets an address of its own.
#[tokio::test]
#[ignore = "run by egress_from_an_agent_in_a_network_namespace_of_its_own, inside a network namespace of its own"]
async fn egress_links_outlive_an_agent_restart() {
    ip(&["link", "set", "lo", "up"]);
    let outside = Outside::start();
    let env = env();
    let Fixture {
        pki,
        tls,
        state,
        pod_uid,
        api,
        ops,
        addr,
    } = fixture("egress-restart", "fast-sandbox-controller");
    // No stock: a killed agent's stock would outlive the test.
    let flags = [
        "--egress",
        "true",
        "--egress-deny",
        "10.0.0.0/8",
        "--stock-size",
        "0",
    ];
    let start = || {
        spawn(
            &env,
            pki.dir.path(),
            state.path(),
            &pod_uid,
            api,
            ops,
            8,
            &flags,
        )
    };

    let running = start();
    wait_ready(ops).await;
    let client = AgentClient::connect(addr, SERVER_NAME, tls.clone())
        .await
        .unwrap();
    let a = |c: &AgentClient, uid: &str| {
        let (c, req) = (c.clone(), sleeper(&env, uid, egress(&[], &[])));
        async move { c.create(&req).await.unwrap().1.unwrap() }
    };
    a(&client, "before").await;
    let reaches = |c: &AgentClient, uid: &str| {
        let script = format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {OUTSIDE} {} 2>&1",
            outside.port
        );
        let (c, uid) = (c.clone(), uid.to_string());
        async move { stdout(&exec(&c, &uid, &["sh", "-c", &script]).await).contains(GREETING) }
    };
    assert!(reaches(&client, "before").await);
    drop(running); // SIGKILL
    // What an attach cut by that kill may leave: a link without an address.
    ip(&[
        "link",
        "add",
        "fsx00000000dead",
        "type",
        "veth",
        "peer",
        "name",
        "fsy00000000dead",
    ]);

    let _running = start();
    wait_ready(ops).await;
    let client = AgentClient::connect(addr, SERVER_NAME, tls).await.unwrap();
    let gone = !Command::new("ip")
        .args(["link", "show", "fsx00000000dead"])
        .output()
        .unwrap()
        .status
        .success();
    assert!(gone, "the half-made link is still there");
    a(&client, "after").await;
    for uid in ["before", "after"] {
        assert!(reaches(&client, uid).await, "{uid} lost its egress");
    }
    let address = |uid: &str| {
        let c = client.clone();
        let uid = uid.to_string();
        async move { stdout(&exec(&c, &uid, &["sh", "-c", "ip -4 addr show eth0 | grep inet"]).await) }
    };
    assert_ne!(address("before").await, address("after").await);
    for uid in ["before", "after"] {
        client.delete(uid, 0).await.unwrap().1.unwrap();
    }
    let cd = fast_sandbox_agent::runtime::Containerd::connect(
        &env.socket,
        &env.namespace,
        "overlayfs",
        "io.containerd.runc.v2",
    )
    .await
    .unwrap();
    let logs = state.path().join(&pod_uid).join("logs");
    support::assert_nothing_left(&cd, &pod_uid, &logs).await;
}
