//! User namespaces on the real cluster. A pool that says nothing about
//! `hostUsers` runs every sandbox in a user namespace of its own: `id -u`
//! inside is 0, while the node sees the sandbox's process as an
//! unprivileged uid of a slot no other sandbox has; the image's files are
//! root's inside and root writes where root may.
//!
//! The one acting is a namespace `edit` tenant, who cannot make a pool run
//! sandboxes as the node's own users (refused at admission naming
//! `spec.hostUsers`, on create and on update); a user of another namespace
//! can do nothing with the tenant's sandboxes.

mod tenancy;

use std::collections::HashSet;

use fast_sandbox_api::{Sandbox, SandboxPool};
use fast_sandbox_e2e::scenario::BUSYBOX;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tenancy::{Cast, pool, ready, refusal, run, running, sandbox, try_run};

/// Where the agent's default range of host ids starts (2^31).
const FIRST_HOST_ID: u64 = 1 << 31;

/// Host PIDs whose real uid is `uid`, from every `/proc/<pid>/status` of
/// this machine (node 1, where the cluster's only sandboxes run).
fn host_pids_of_uid(uid: u64) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Uid:"))?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                == Some(uid)
        })
        .collect()
}

#[tokio::test]
async fn sandboxes_are_root_inside_and_unprivileged_on_the_node() {
    let cast = Cast::new("user namespaces", "e2e-userns").await;
    let pools: Api<SandboxPool> = Api::namespaced(cast.tenant.clone(), &cast.ns);

    // The tenant may not run sandboxes as the node's root.
    let mut host = pool("host", BUSYBOX, None);
    host.spec.host_users = Some(true);
    let message = refusal(
        pools
            .create(&PostParams::default(), &host)
            .await
            .unwrap_err(),
    );
    assert!(
        message.contains("spec.hostUsers") && message.contains("allowHostUsers"),
        "the refusal names the field and the policy key: {message}"
    );

    ready(
        &cast.tenant,
        &cast.admin,
        &cast.ns,
        pool("p", BUSYBOX, None),
    )
    .await;
    let message = refusal(
        pools
            .patch(
                "p",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"hostUsers": true}})),
            )
            .await
            .unwrap_err(),
    );
    assert!(
        message.contains("spec.hostUsers"),
        "on update too: {message}"
    );

    let sandboxes: Api<Sandbox> = Api::namespaced(cast.tenant.clone(), &cast.ns);
    let mut roots = HashSet::new();
    for name in ["a", "b"] {
        sandboxes
            .create(
                &PostParams::default(),
                &sandbox(name, BUSYBOX, &["sleep", "100000"], None),
            )
            .await
            .unwrap();
        running(&sandboxes, name).await;
        let (code, ids) = run(&cast.tenant, &cast.ns, name, &["sh", "-c", "id -u; id -g"]).await;
        assert_eq!((code, ids.as_str()), (0, "0\n0\n"), "{name} is root inside");
        let (_, map) = run(&cast.tenant, &cast.ns, name, &["cat", "/proc/self/uid_map"]).await;
        let fields: Vec<u64> = map.split_whitespace().map(|f| f.parse().unwrap()).collect();
        let [inside, host_root, size] = fields[..] else {
            panic!("{name}'s uid_map: {map:?}");
        };
        assert_eq!((inside, size), (0, 65536), "{name}'s uid_map: {map:?}");
        assert!(
            host_root >= FIRST_HOST_ID,
            "{name}'s root is host uid {host_root}, below the agent's range"
        );
        assert!(
            roots.insert(host_root),
            "{name} shares host uid {host_root} with another sandbox"
        );
        // What the node sees: the sandbox's processes, and nothing else,
        // run as that unprivileged uid.
        let pids = host_pids_of_uid(host_root);
        assert!(
            !pids.is_empty(),
            "no process of this machine runs as host uid {host_root}"
        );
        let (code, out) = run(
            &cast.tenant,
            &cast.ns,
            name,
            &[
                "sh",
                "-c",
                "stat -c %u /bin/busybox && touch /at-root && mkdir /etc/made && echo wrote",
            ],
        )
        .await;
        assert_eq!(
            (code, out.as_str()),
            (0, "0\nwrote\n"),
            "{name}: the image is root's inside and root writes to it"
        );
        // Another namespace's user reaches nothing of it.
        assert!(
            try_run(&cast.stranger, &cast.ns, name, &["id"])
                .await
                .is_err(),
            "a user of another namespace exec'd in {name}"
        );
    }
    cast.finish().await;
}
