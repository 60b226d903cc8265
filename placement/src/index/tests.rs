//! Unit tests of the placement index, through its public API only.

use super::*;
use std::sync::Arc;

const POOL: &str = "ns/pool";

fn agent(pod: &str, slots: u32, images: &[&str]) -> AgentState {
    AgentState {
        pool_key: POOL.into(),
        pod_name: pod.into(),
        node_name: format!("node-{pod}"),
        ready: true,
        draining: false,
        slots_total: slots,
        images: images.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn empty_or_unknown_pool_has_no_capacity() {
    let idx = Index::new();
    assert_eq!(idx.choose(POOL, "busybox"), None);
    assert_eq!(
        idx.reserve(POOL, "busybox", "u1"),
        Err(NoCapacity {
            pool_key: POOL.into()
        })
    );
    idx.upsert_pool(POOL);
    assert!(idx.has_pool(POOL));
    assert!(!idx.has_pool("ns/other"));
    assert_eq!(idx.choose(POOL, "busybox"), None);
}

#[test]
fn image_hit_is_preferred_and_names_are_normalised() {
    let idx = Index::new();
    idx.upsert_agent(agent("a", 4, &[]));
    idx.upsert_agent(agent("b", 4, &["docker.io/library/busybox:latest"]));
    let c = idx.choose(POOL, "busybox").unwrap();
    assert_eq!((c.pod_name.as_str(), c.image_hit), ("b", true));
    assert_eq!(c.node_name, "node-b");
    let c = idx.choose(POOL, "nginx").unwrap();
    assert!(!c.image_hit);
}

#[test]
fn holders_spread_least_loaded_first_then_round_robin() {
    let idx = Index::new();
    for p in ["a", "b", "c"] {
        idx.upsert_agent(agent(p, 4, &["busybox"]));
    }
    idx.upsert_agent(agent("d", 4, &["nginx"]));
    let reserve = |keys: std::ops::Range<i32>| -> Vec<String> {
        keys.map(|i| {
            idx.reserve(POOL, "busybox", &i.to_string())
                .unwrap()
                .pod_name
        })
        .collect()
    };
    // Holders only, each in turn: never the idle agent without it.
    assert_eq!(reserve(0..6), ["a", "b", "c", "a", "b", "c"]);
    // "a" and "c" give back a slot: the least loaded go first, "a"
    // (chosen longest ago) before "c", then "b", chosen before both.
    idx.release("0");
    idx.release("5");
    assert_eq!(reserve(6..9), ["a", "c", "b"]);
    // An image update that keeps busybox keeps "b" a holder.
    idx.upsert_agent(agent("b", 4, &["busybox", "nginx"]));
    assert_eq!(reserve(9..12), ["a", "c", "b"]);
}

#[test]
fn holders_spread_when_every_free_agent_holds_the_image() {
    // As many holders as free agents: the free set is walked instead.
    let idx = Index::new();
    for p in ["a", "b", "c"] {
        idx.upsert_agent(agent(p, 2, &["busybox"]));
    }
    let order: Vec<String> = (0..6)
        .map(|i| {
            idx.reserve(POOL, "busybox", &i.to_string())
                .unwrap()
                .pod_name
        })
        .collect();
    assert_eq!(order, ["a", "b", "c", "a", "b", "c"]);
}

#[test]
fn full_holder_falls_through_to_next_holder_then_least_loaded() {
    let idx = Index::new();
    idx.upsert_agent(agent("a", 1, &["busybox"]));
    idx.upsert_agent(agent("b", 1, &[]));
    idx.upsert_agent(agent("c", 2, &[]));
    let c1 = idx.reserve(POOL, "busybox", "1").unwrap();
    assert_eq!((c1.pod_name.as_str(), c1.image_hit), ("a", true));
    let c2 = idx.reserve(POOL, "busybox", "2").unwrap();
    assert!(!c2.image_hit);
    let c3 = idx.reserve(POOL, "busybox", "3").unwrap();
    let c4 = idx.reserve(POOL, "busybox", "4").unwrap();
    let mut got = vec![c2.pod_name, c3.pod_name, c4.pod_name];
    got.sort();
    assert_eq!(got, ["b", "c", "c"]);
    assert!(idx.reserve(POOL, "busybox", "5").is_err());
}

#[test]
fn equal_load_spreads_round_robin() {
    let idx = Index::new();
    for p in ["a", "b", "c"] {
        idx.upsert_agent(agent(p, 10, &[]));
    }
    let picks: Vec<String> = (0..6)
        .map(|i| idx.reserve(POOL, "img", &i.to_string()).unwrap().pod_name)
        .collect();
    assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
}

#[test]
fn pools_are_isolated() {
    let idx = Index::new();
    idx.upsert_agent(agent("a", 1, &["busybox"]));
    let mut other = agent("x", 5, &["busybox"]);
    other.pool_key = "ns/other".into();
    idx.upsert_agent(other);
    let mut other_ns = agent("y", 5, &["busybox"]);
    other_ns.pool_key = "ns2/pool".into();
    idx.upsert_agent(other_ns);
    assert_eq!(idx.reserve(POOL, "busybox", "1").unwrap().pod_name, "a");
    assert!(idx.reserve(POOL, "busybox", "2").is_err());
    assert_eq!(
        idx.reserve("ns/other", "busybox", "3").unwrap().pod_name,
        "x"
    );
    assert_eq!(
        idx.reserve("ns2/pool", "busybox", "4").unwrap().pod_name,
        "y"
    );
}

#[test]
fn draining_and_not_ready_agents_are_skipped() {
    let idx = Index::new();
    let mut d = agent("draining", 5, &["busybox"]);
    d.draining = true;
    let mut n = agent("unready", 5, &["busybox"]);
    n.ready = false;
    idx.upsert_agent(d);
    idx.upsert_agent(n);
    assert_eq!(idx.choose(POOL, "busybox"), None);
    idx.upsert_agent(agent("ok", 5, &[]));
    assert_eq!(idx.choose(POOL, "busybox").unwrap().pod_name, "ok");
    // Becoming ready makes the holder eligible again.
    idx.upsert_agent(agent("unready", 5, &["busybox"]));
    let c = idx.choose(POOL, "busybox").unwrap();
    assert_eq!((c.pod_name.as_str(), c.image_hit), ("unready", true));
    // Draining takes it out at once.
    let mut d2 = agent("unready", 5, &["busybox"]);
    d2.draining = true;
    idx.upsert_agent(d2);
    assert_eq!(idx.choose(POOL, "busybox").unwrap().pod_name, "ok");
}

#[test]
fn dry_choice_takes_nothing_and_reserve_is_idempotent() {
    let idx = Index::new();
    idx.upsert_agent(agent("a", 1, &[]));
    assert!(idx.choose(POOL, "i").is_some());
    assert!(idx.choose(POOL, "i").is_some());
    assert_eq!(idx.used("a"), 0);
    let c = idx.reserve(POOL, "i", "uid").unwrap();
    assert_eq!(idx.reserve(POOL, "i", "uid").unwrap().pod_name, c.pod_name);
    assert_eq!(idx.used("a"), 1);
    idx.release("uid");
    idx.release("uid");
    assert_eq!(idx.used("a"), 0);
}

#[test]
fn watch_replay_is_idempotent_and_rekeys_reservations() {
    let idx = Index::new();
    idx.upsert_agent(agent("a", 2, &[]));
    let c = idx.reserve(POOL, "i", "token").unwrap();
    assert_eq!(idx.used(&c.pod_name), 1);
    for _ in 0..3 {
        idx.observe_bound("uid", Some("token"), "a");
    }
    assert_eq!(idx.used("a"), 1);
    // Confirmed bindings survive expiry; tentative ones do not.
    idx.reserve(POOL, "i", "lost-token").unwrap();
    assert_eq!(idx.used("a"), 2);
    let later = Instant::now() + Duration::from_secs(60);
    assert_eq!(idx.expire_tentative(later, Duration::from_secs(30)), 1);
    assert_eq!(idx.used("a"), 1);
    idx.observe_unbound("uid", Some("token"));
    idx.observe_unbound("uid", Some("token"));
    assert_eq!(idx.used("a"), 0);
}

#[test]
fn sandboxes_seen_before_their_agent_still_count() {
    let idx = Index::new();
    idx.observe_bound("u1", None, "a");
    idx.upsert_agent(agent("a", 1, &[]));
    assert_eq!(idx.choose(POOL, "i"), None);
    idx.retain_sandboxes(|uid| uid != "u1");
    assert_eq!(idx.choose(POOL, "i").unwrap().pod_name, "a");
}

#[test]
fn removing_agents_and_images_unlinks_them() {
    let idx = Index::new();
    idx.upsert_agent(agent("a", 1, &["busybox"]));
    idx.upsert_agent(agent("b", 1, &[]));
    idx.upsert_agent(agent("a", 1, &[]));
    assert!(!idx.choose(POOL, "busybox").unwrap().image_hit);
    idx.upsert_agent(agent("b", 1, &["busybox"]));
    assert_eq!(idx.choose(POOL, "busybox").unwrap().pod_name, "b");
    idx.remove_agent("b");
    let c = idx.choose(POOL, "busybox").unwrap();
    assert_eq!((c.pod_name.as_str(), c.image_hit), ("a", false));
    idx.retain_agents(|_| false);
    assert_eq!(idx.agent_count(), 0);
    assert_eq!(idx.choose(POOL, "busybox"), None);
}

#[test]
fn reserve_avoiding_moves_the_slot() {
    let idx = Index::new();
    idx.upsert_agent(agent("a", 1, &["busybox"]));
    idx.upsert_agent(agent("b", 1, &[]));
    assert_eq!(idx.reserve(POOL, "busybox", "u").unwrap().pod_name, "a");
    assert_eq!(
        idx.reserve_avoiding(POOL, "busybox", "u", "a")
            .unwrap()
            .pod_name,
        "b"
    );
    assert_eq!((idx.used("a"), idx.used("b")), (0, 1));
    assert!(idx.reserve_avoiding(POOL, "busybox", "u", "b").is_ok());
    assert_eq!((idx.used("a"), idx.used("b")), (1, 0));
}

#[test]
fn image_table_is_bounded_per_pool() {
    let idx = Index::with_image_capacity(2);
    idx.upsert_agent(agent("a", 5, &["one", "two", "three"]));
    let hits = ["one", "two", "three"]
        .iter()
        .filter(|i| idx.choose(POOL, i).unwrap().image_hit)
        .count();
    assert_eq!(hits, 2);
}

#[test]
fn usage_totals() {
    let idx = Index::new();
    idx.upsert_agent(agent("a", 3, &[]));
    let mut d = agent("d", 3, &[]);
    d.draining = true;
    idx.upsert_agent(d);
    idx.reserve(POOL, "i", "1").unwrap();
    assert_eq!(
        idx.pool_usage(POOL),
        PoolUsage {
            agents: 2,
            schedulable: 1,
            slots_total: 3,
            slots_used: 1
        }
    );
}

#[test]
fn concurrent_reservations_never_overbook() {
    let idx = Arc::new(Index::new());
    let agents = 20;
    let slots = 7;
    for i in 0..agents {
        let img = if i % 3 == 0 { vec!["busybox"] } else { vec![] };
        idx.upsert_agent(agent(&format!("a{i}"), slots, &img));
    }
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let idx = idx.clone();
            std::thread::spawn(move || {
                let mut won = 0;
                for i in 0..100 {
                    let key = format!("{t}-{i}");
                    if idx.reserve(POOL, "busybox", &key).is_ok() {
                        won += 1;
                        if i % 10 == 0 {
                            idx.release(&key);
                            won -= 1;
                        }
                    }
                }
                won
            })
        })
        .collect();
    let won: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(won, agents * slots, "every slot taken exactly once");
    for i in 0..agents {
        assert_eq!(idx.used(&format!("a{i}")), slots);
    }
    assert_eq!(idx.pool_usage(POOL).slots_used, agents * slots);
}

#[test]
fn an_agent_that_refused_is_skipped_with_growing_backoff() {
    let idx = Index::new();
    idx.upsert_agent(agent("a", 4, &[]));
    idx.upsert_agent(agent("b", 4, &[]));
    let now = Instant::now();
    let first = idx.record_refusal("a", now).unwrap();
    assert_eq!(first - now, FIRST_REFUSAL_BACKOFF);
    for i in 0..4 {
        assert_eq!(
            idx.reserve(POOL, "i", &i.to_string()).unwrap().pod_name,
            "b"
        );
    }
    assert!(
        idx.reserve(POOL, "i", "5").is_err(),
        "a is still backing off"
    );
    let second = idx.record_refusal("a", now).unwrap();
    assert_eq!(second - now, FIRST_REFUSAL_BACKOFF * 2);
    for _ in 0..20 {
        idx.record_refusal("a", now);
    }
    assert_eq!(
        idx.record_refusal("a", now).unwrap() - now,
        MAX_REFUSAL_BACKOFF
    );
    // A refusal long ago no longer counts; acceptance resets the streak.
    idx.record_refusal("a", now - Duration::from_secs(120));
    assert_eq!(idx.reserve(POOL, "i", "6").unwrap().pod_name, "a");
    idx.record_acceptance("a");
    assert_eq!(
        idx.record_refusal("a", now).unwrap() - now,
        FIRST_REFUSAL_BACKOFF
    );
    assert_eq!(idx.record_refusal("unknown", now), None);
}

#[test]
fn a_node_known_to_lack_the_image_is_never_chosen_while_another_holds_it() {
    let idx = Index::new();
    idx.upsert_agent(agent("holder", 1, &["busybox"]));
    idx.upsert_agent(agent("lacks", 4, &["nginx"]));
    idx.upsert_agent(agent("unknown", 1, &[]));
    assert_eq!(
        idx.reserve(POOL, "busybox", "1").unwrap().pod_name,
        "holder"
    );
    // The holder is full: a node whose images are unknown may still have it.
    let c = idx.reserve(POOL, "busybox", "2").unwrap();
    assert_eq!((c.pod_name.as_str(), c.image_hit), ("unknown", false));
    // Only a node known to lack it has room: wait for the holder.
    assert!(idx.reserve(POOL, "busybox", "3").is_err());
    assert!(
        idx.reserve_avoiding(POOL, "busybox", "3", "holder")
            .is_err()
    );
    // An image no node of the pool holds goes to the least loaded agent.
    assert_eq!(idx.reserve(POOL, "redis", "4").unwrap().pod_name, "lacks");
    idx.release("1");
    assert_eq!(
        idx.reserve(POOL, "busybox", "3").unwrap().pod_name,
        "holder"
    );
}
