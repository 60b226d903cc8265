//! Unit tests of the extender's index, through its public API.

use fast_sandbox_api::SandboxSpec;
use fast_sandbox_api::image::normalize;
use fast_sandbox_api::wellknown::{LABEL_POOL, LABEL_POOL_NAMESPACE};
use k8s_openapi::api::core::v1::{ContainerImage, NodeCondition, NodeSpec, NodeStatus, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

use super::state::ASSUMED_FOR;
use super::*;

const MIB: i64 = 1 << 20;

fn node(name: &str, images: &[(&str, i64)]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            images: Some(
                images
                    .iter()
                    .map(|(n, s)| ContainerImage {
                        names: Some(vec![n.to_string()]),
                        size_bytes: Some(*s),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
    }
}

fn pool(name: &str, warm: &[&str]) -> SandboxPool {
    let mut p = SandboxPool::new(name, Default::default());
    p.metadata.namespace = Some("ns".into());
    p.spec.warm_images = warm.iter().map(|s| s.to_string()).collect();
    p
}

fn agent_pod(name: &str, pool: &str, node: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("fast-sandbox-system".into()),
            labels: Some(
                [
                    (LABEL_POOL.to_string(), pool.to_string()),
                    (LABEL_POOL_NAMESPACE.to_string(), "ns".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: node.map(Into::into),
            ..Default::default()
        }),
        status: None,
    }
}

fn sandbox(uid: &str, pool: &str, image: &str, started: DateTime<Utc>) -> Sandbox {
    let mut s = Sandbox::new(
        uid,
        SandboxSpec {
            image: image.into(),
            pool_ref: pool.into(),
            ..Default::default()
        },
    );
    s.metadata.namespace = Some("ns".into());
    s.metadata.uid = Some(uid.into());
    s.metadata.creation_timestamp = Some(Time(
        Timestamp::new(started.timestamp(), 0).unwrap_or(Timestamp::UNIX_EPOCH),
    ));
    s
}

fn agent(pool: &str, images: &[&str]) -> AgentPod {
    AgentPod {
        pool: PoolKey::new("ns", pool),
        images: images.iter().map(|i| normalize(i)).collect(),
        never_pulled: Vec::new(),
        name: String::new(),
        namespace: "fast-sandbox-system".into(),
    }
}

#[test]
fn agents_scored_back_to_back_spread_before_the_watch_catches_up() {
    let idx = Index::new(ScoringConfig::default());
    idx.replace_nodes(&[node("a", &[]), node("b", &[])]);
    let named = |n: &str| AgentPod {
        name: n.to_string(),
        ..agent("p", &[])
    };
    let now = Utc::now();
    // The first goes to a (the extender breaks the tie itself); the
    // second, scored before any binding is watched, prefers b.
    let s1 = idx.prioritize(&named("p-1"), &["a", "b"], now);
    assert_eq!(s1[0], s1[1] + 1);
    let s2 = idx.prioritize(&named("p-2"), &["a", "b"], now);
    assert!(s2[1] > s2[0], "{s2:?}");
    // Scored again, p-1 does not count itself: a (where only it is)
    // still beats b (where p-2 is).
    let again = idx.prioritize(&named("p-1"), &["a", "b"], now);
    assert!(again[0] > again[1], "{again:?}");
    // The watch confirms p-1 on a and p-2 on b: each counted once.
    idx.apply_agent_pod(&agent_pod("p-1", "p", Some("a")));
    idx.apply_agent_pod(&agent_pod("p-2", "p", Some("b")));
    let s = idx.prioritize(&agent("p", &[]), &["a", "b"], now);
    assert_eq!(s[0], s[1], "{s:?}");
    assert_eq!(idx.stats().agents, 2);
    // An assumption never confirmed stops counting after a while.
    idx.prioritize(&named("p-3"), &["a", "b"], now);
    let later = now + ASSUMED_FOR + chrono::Duration::seconds(1);
    idx.prioritize(&named("p-4"), &["a", "b"], later);
    idx.delete_agent_pod("fast-sandbox-system", "p-4");
    let s = idx.prioritize(&agent("p", &[]), &["a", "b"], later);
    assert_eq!(s[0], s[1], "p-3 no longer counts: {s:?}");
}

#[test]
fn a_small_image_on_one_node_still_wins() {
    let idx = Index::new(ScoringConfig::default());
    idx.replace_nodes(&[
        node("has", &[("docker.io/library/tiny:1", MIB)]),
        node("big1", &[("docker.io/library/other:1", 900 * MIB)]),
        node("big2", &[("docker.io/library/other:1", 900 * MIB)]),
    ]);
    idx.apply_pool(&pool("p", &["tiny:1"]));
    let scores = idx.prioritize(&agent("p", &[]), &["has", "big1", "big2"], Utc::now());
    assert_eq!(scores, vec![10, 3, 3]);
}

#[test]
fn agents_of_the_pool_spread_and_others_do_not_count() {
    let idx = Index::new(ScoringConfig::default());
    idx.replace_nodes(&[node("a", &[]), node("b", &[])]);
    idx.apply_agent_pod(&agent_pod("x1", "p", Some("a")));
    idx.apply_agent_pod(&agent_pod("x2", "p", Some("a")));
    idx.apply_agent_pod(&agent_pod("y1", "q", Some("b")));
    idx.apply_agent_pod(&agent_pod("pending", "p", None));
    let s = idx.prioritize(&agent("p", &[]), &["a", "b"], Utc::now());
    assert!(s[0] < s[1], "{s:?}");
    // Moving and deleting pods updates the counts.
    idx.apply_agent_pod(&agent_pod("x2", "p", Some("b")));
    idx.delete_agent_pod("fast-sandbox-system", "x1");
    let s = idx.prioritize(&agent("p", &[]), &["a", "b"], Utc::now());
    assert!(s[0] > s[1], "{s:?}");
    assert_eq!(idx.stats().agents, 2);
}

#[test]
fn recent_sandbox_images_count_by_recency() {
    let idx = Index::new(ScoringConfig {
        spread_weight: 0.0,
        recent_half_life: std::time::Duration::from_secs(60),
    });
    let now = Utc::now();
    idx.replace_nodes(&[
        node("fresh", &[("fresh:1", 50 * MIB)]),
        node("stale", &[("stale:1", 50 * MIB)]),
    ]);
    idx.apply_sandbox(&sandbox("u1", "p", "fresh:1", now));
    idx.apply_sandbox(&sandbox(
        "u2",
        "p",
        "stale:1",
        now - chrono::Duration::hours(1),
    ));
    let s = idx.prioritize(&agent("p", &[]), &["fresh", "stale"], now);
    assert!(s[0] > s[1], "{s:?}");
    // A deleted sandbox's use stays, dated at its end.
    idx.delete_sandbox(&sandbox("u2", "p", "stale:1", now), now);
    let s = idx.prioritize(&agent("p", &[]), &["fresh", "stale"], now);
    assert_eq!(s[0], s[1], "{s:?}");
}

#[test]
fn filter_names_why_a_node_cannot_host() {
    let idx = Index::new(ScoringConfig::default());
    let mut not_ready = node("nr", &[]);
    not_ready
        .status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()[0]
        .status = "False".into();
    let mut cordoned = node("c", &[("fast-sandbox/agent:dev", MIB)]);
    cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
    let many: Vec<(String, i64)> = (0..NODE_STATUS_MAX_IMAGES)
        .map(|i| (format!("img{i}:1"), MIB))
        .collect();
    let many: Vec<(&str, i64)> = many.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    idx.replace_nodes(&[
        not_ready,
        cordoned,
        node("ok", &[("fast-sandbox/agent:dev", MIB)]),
        node("lacks", &[("busybox", MIB)]),
        node("full", &many),
    ]);
    let mut a = agent("p", &["fast-sandbox/agent:dev"]);
    a.never_pulled = a.images.clone();
    let v = idx.filter(&a, &["nr", "c", "ok", "lacks", "full", "unknown"]);
    assert_eq!(v[0], Some(Unfit::NotReady));
    assert_eq!(v[1], Some(Unfit::Unschedulable));
    assert_eq!(v[2], None);
    assert_eq!(
        v[3],
        Some(Unfit::ImageMissing(
            "docker.io/fast-sandbox/agent:dev".into()
        ))
    );
    assert_eq!(v[4], None, "a possibly cut image list proves nothing");
    assert_eq!(v[5], None, "unknown nodes pass");

    let idx = Index::new(ScoringConfig::default()).with_never_pulled_check(false);
    idx.replace_nodes(&[node("lacks", &[("busybox", MIB)])]);
    assert_eq!(idx.filter(&a, &["lacks"]), vec![None]);
}

#[test]
fn relists_replace_nodes_and_agents() {
    let idx = Index::new(ScoringConfig::default());
    idx.replace_nodes(&[node("a", &[]), node("b", &[])]);
    idx.apply_agent_pod(&agent_pod("x", "p", Some("a")));
    idx.replace_nodes(&[node("b", &[])]);
    idx.replace_agent_pods(&[]);
    let st = idx.stats();
    assert_eq!((st.nodes, st.agents), (1, 0));
    idx.apply_pool(&pool("p", &["a:1"]));
    idx.replace_pools(&[]);
    assert_eq!(
        idx.prioritize(&agent("p", &[]), &["b"], Utc::now()),
        vec![3],
        "a pool's warm images go with its object"
    );
}
