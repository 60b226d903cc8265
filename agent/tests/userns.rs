//! User namespaces against a real containerd and runc: a sandbox's uid 0
//! is an unprivileged host uid of a slot no other sandbox of the node
//! holds, on the cold path and claimed from the stock alike; its root
//! filesystem is idmapped (the image's files are root's inside, and root
//! can write anywhere root could), capped layers included; files the agent
//! writes are the sandbox user's; the slot goes back when the sandbox goes.
//! Where the node's containerd cannot idmap a root (1.6), a create fails as
//! `RuntimeUnavailable` saying what to do.

mod support;

use std::collections::HashSet;

use bytes::Bytes;
use fast_sandbox_agent::userns::{IDS_PER_SANDBOX, IdRange, SLOT_LEASE_PREFIX};
use fast_sandbox_api::agent::{ErrorCode, SandboxInfo};
use support::{Env, TestAgent, env, exec, request, stdout, tar_of};

/// Host ids of these tests' sandboxes: apart from every other test's.
const RANGE: IdRange = IdRange {
    first: 3 << 30,
    slots: 64,
};

fn on_containerd_1_6() -> bool {
    std::env::var("FAST_SANDBOX_TEST_CONTAINERD").as_deref() == Ok("1.6")
}

/// The capped test's: apart from [`RANGE`], so each test sees its own
/// leases.
const CAPPED_RANGE: IdRange = IdRange {
    first: (3 << 30) + 64 * IDS_PER_SANDBOX,
    slots: 64,
};

async fn mapped_agent(env: &Env, test: &str, stock: usize, range: IdRange) -> TestAgent {
    let image = env.image.clone();
    TestAgent::start_with(env, test, 8, |c| {
        c.user_namespaces = Some(range);
        c.stock_size = stock;
        c.stock_images = if stock > 0 { vec![image] } else { vec![] };
    })
    .await
}

/// The host uid of host PID `pid`, from the Uid line of its status.
fn host_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no Uid line for pid {pid}: {status}"))
}

/// Checks one running sandbox from inside and from the host; returns the
/// host uid its root is.
async fn check_mapped(a: &TestAgent, info: &SandboxInfo, range: IdRange) -> u32 {
    let uid = &info.uid;
    let pid = info.pid.expect("a running sandbox has a pid");
    let host = host_uid(pid);
    assert!(
        host >= range.first && (host - range.first).is_multiple_of(IDS_PER_SANDBOX),
        "sandbox {uid}'s root is host uid {host}, not the start of a slot of {range:?}"
    );
    let inside = exec(
        &a.client,
        uid,
        &["sh", "-c", "id -u; id -g; cat /proc/self/uid_map"],
    )
    .await;
    let text = stdout(&inside);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("0"), "uid inside {uid}: {text}");
    assert_eq!(lines.next(), Some("0"), "gid inside {uid}: {text}");
    let map: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        map,
        ["0", &host.to_string(), &IDS_PER_SANDBOX.to_string()],
        "uid_map of {uid}"
    );
    // The image's files are root's inside (idmapped, not unmapped nobody),
    // and root writes where root may: the layer's root, the image's
    // directories.
    let writes = exec(
        &a.client,
        uid,
        &[
            "sh",
            "-c",
            "stat -c %u:%g /bin/busybox /etc / && touch /at-root && mkdir /etc/made && echo x > /bin/new && echo wrote",
        ],
    )
    .await;
    assert_eq!(
        stdout(&writes),
        "0:0\n0:0\n0:0\nwrote\n",
        "{uid}: {:?}",
        String::from_utf8_lossy(&writes.stderr)
    );
    // What the agent writes is the sandbox user's on the host and inside.
    a.client
        .write_file(
            uid,
            "/tmp/uploaded",
            Some(0o600),
            fast_sandbox_server::body::full(Bytes::from_static(b"hi")),
        )
        .await
        .unwrap()
        .unwrap();
    let on_host = std::fs::metadata(format!("/proc/{pid}/root/tmp/uploaded")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&on_host),
        host,
        "uploaded file's host owner"
    );
    let seen = exec(&a.client, uid, &["cat", "/tmp/uploaded"]).await;
    assert_eq!(stdout(&seen), "hi", "root inside reads its 0600 file");
    // An archive carries the ids the sandbox sees, not the node's mapping.
    let archive = tar_of(&a.client, uid, "/tmp/uploaded").await;
    for entry in tar::Archive::new(&archive[..]).entries().unwrap() {
        let h = entry.unwrap().header().clone();
        assert_eq!(
            (h.uid().unwrap(), h.gid().unwrap()),
            (0, 0),
            "{uid}: archived owner"
        );
    }
    host
}

/// Whether slot lease `id` is one of `range`'s.
fn in_range(id: &str, range: IdRange) -> bool {
    fast_sandbox_agent::userns::lease_base(id).is_some_and(|b| {
        b >= range.first && u64::from(b) < u64::from(range.first) + u64::from(range.slots) * 65536
    })
}

async fn slot_leases(a: &TestAgent) -> HashSet<String> {
    a.cd.leases(SLOT_LEASE_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect()
}

#[tokio::test]
async fn cold_and_claimed_sandboxes_are_root_inside_and_unprivileged_and_apart_on_the_host() {
    let env = env();
    let a = mapped_agent(&env, "userns-both", 1, RANGE).await;
    if on_containerd_1_6() {
        let refused = a
            .client
            .create(&request(&env, "un-refused", &["true"]))
            .await
            .unwrap()
            .1
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::RuntimeUnavailable, "{refused:?}");
        assert!(
            refused.message.contains("user namespaces") && refused.message.contains("hostUsers"),
            "the message says what is missing and what to do: {}",
            refused.message
        );
        a.release_and_assert_nothing_left().await;
        return;
    }
    // A second agent, without stock: slots are the node's, not an agent's.
    let cold = mapped_agent(&env, "userns-cold", 0, RANGE).await;
    a.wait_stock(1).await;
    let mut hosts = HashSet::new();
    let mut infos = Vec::new();
    for (agent, uid, claimed) in [
        (&a, "un-claimed", true),
        (&cold, "un-cold-1", false),
        (&cold, "un-cold-2", false),
    ] {
        let info = agent
            .client
            .create(&request(&env, uid, &["sleep", "100000"]))
            .await
            .unwrap()
            .1
            .unwrap();
        assert_eq!(
            info.container_id.starts_with("stock-"),
            claimed,
            "{uid}: {info:?}"
        );
        let host = check_mapped(agent, &info, RANGE).await;
        assert!(
            hosts.insert(host),
            "{uid} shares host uid {host} with another sandbox"
        );
        infos.push((agent, info));
    }
    let held = slot_leases(&a).await;
    for host in &hosts {
        assert!(
            held.contains(&format!("{SLOT_LEASE_PREFIX}{host}")),
            "the slot of host uid {host} has its lease: {held:?}"
        );
    }
    for (agent, info) in &infos {
        agent.client.delete(&info.uid, 0).await.unwrap().1.unwrap();
    }
    let left = slot_leases(&a).await;
    for host in &hosts {
        assert!(
            !left.contains(&format!("{SLOT_LEASE_PREFIX}{host}")),
            "the slot of host uid {host} went back with its sandbox: {left:?}"
        );
    }
    a.release_and_assert_nothing_left().await;
    cold.assert_nothing_left().await;
    let left: Vec<_> = slot_leases(&a)
        .await
        .into_iter()
        .filter(|l| in_range(l, RANGE))
        .collect();
    assert!(
        left.is_empty(),
        "the stock's slots went back with it: {left:?}"
    );
}

#[tokio::test]
async fn a_capped_layer_belongs_to_the_sandboxs_root() {
    let env = env();
    let a = mapped_agent(&env, "userns-capped", 0, CAPPED_RANGE).await;
    let mut req = request(&env, "un-capped", &["sleep", "100000"]);
    req.limits.ephemeral_storage_bytes = Some(8 << 20);
    if on_containerd_1_6() {
        let refused = a.client.create(&req).await.unwrap().1.unwrap_err();
        assert_eq!(refused.code, ErrorCode::RuntimeUnavailable, "{refused:?}");
        a.assert_nothing_left().await;
        return;
    }
    let info = a.client.create(&req).await.unwrap().1.unwrap();
    let host = check_mapped(&a, &info, CAPPED_RANGE).await;
    a.client.delete(&info.uid, 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
    assert!(
        !slot_leases(&a)
            .await
            .contains(&format!("{SLOT_LEASE_PREFIX}{host}")),
        "the slot went back"
    );
}
