//! Prioritize latency at 1,000 and 5,000 nodes holding 50 images each (two
//! names per image, as the kubelet reports a tag and a digest), for a pool
//! with 10 warm images and 200 recent sandboxes over 20 images:
//!
//! * `score/<n>`: the scoring alone, from the index;
//! * `verb/<n>`: the whole verb: decode a `NodeNames` request with a
//!   real-looking agent pod, score, encode the `HostPriorityList`.
//!
//! Before criterion runs, p50/p99/max of the whole verb are printed from
//! individually timed calls.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{BenchmarkId, Criterion, criterion_group};
use fast_sandbox_api::{Sandbox, SandboxPool, SandboxSpec};
use fast_sandbox_extender::agent_pod::{AgentPod, PoolKey};
use fast_sandbox_extender::{Extender, Index, ScoringConfig};
use k8s_openapi::api::core::v1::{ContainerImage, Node, NodeCondition, NodeStatus, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

const SIZES: [usize; 2] = [1_000, 5_000];
const IMAGES_PER_NODE: usize = 50;
const UNIVERSE: u64 = 400;

/// Deterministic pseudo-random numbers (no dependency, same run each time).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn image_name(i: u64) -> String {
    format!("registry.example.com/team/app-{i}:v{}", i % 7)
}

fn nodes(n: usize) -> Vec<Node> {
    let mut rng = Lcg(42);
    (0..n)
        .map(|i| {
            let images = (0..IMAGES_PER_NODE)
                .map(|_| {
                    let id = rng.next() % UNIVERSE;
                    ContainerImage {
                        names: Some(vec![
                            format!("registry.example.com/team/app-{id}@sha256:{id:064x}"),
                            image_name(id),
                        ]),
                        size_bytes: Some(((id % 50) as i64 + 1) << 20),
                    }
                })
                .collect();
            Node {
                metadata: ObjectMeta {
                    name: Some(format!("node-{i:05}")),
                    ..Default::default()
                },
                spec: None,
                status: Some(NodeStatus {
                    conditions: Some(vec![NodeCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        ..Default::default()
                    }]),
                    images: Some(images),
                    ..Default::default()
                }),
            }
        })
        .collect()
}

fn index(n: usize) -> Arc<Index> {
    let idx = Arc::new(Index::new(ScoringConfig::default()));
    idx.replace_nodes(&nodes(n));
    let mut pool = SandboxPool::new("pool", Default::default());
    pool.metadata.namespace = Some("team-a".into());
    pool.spec.warm_images = (0..10).map(|i| image_name(i * 3)).collect();
    idx.apply_pool(&pool);
    let now = Utc::now().timestamp();
    for s in 0..200u64 {
        let mut sbx = Sandbox::new(
            &format!("s{s}"),
            SandboxSpec {
                image: image_name(100 + s % 20),
                pool_ref: "pool".into(),
                ..Default::default()
            },
        );
        sbx.metadata.namespace = Some("team-a".into());
        sbx.metadata.uid = Some(format!("uid-{s}"));
        sbx.metadata.creation_timestamp =
            Some(Time(Timestamp::new(now - (s as i64) * 60, 0).unwrap()));
        idx.apply_sandbox(&sbx);
    }
    for a in 0..(n / 10) {
        idx.apply_agent_pod(&Pod {
            metadata: ObjectMeta {
                name: Some(format!("agent-{a}")),
                namespace: Some("fast-sandbox-system".into()),
                labels: Some(
                    [
                        ("sandbox.fast.io/pool".to_string(), "pool".to_string()),
                        (
                            "sandbox.fast.io/pool-namespace".to_string(),
                            "team-a".to_string(),
                        ),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(format!("node-{:05}", a * 7 % n)),
                ..Default::default()
            }),
            status: None,
        });
    }
    idx
}

fn request(n: usize) -> Vec<u8> {
    let names: Vec<String> = (0..n).map(|i| format!("node-{i:05}")).collect();
    serde_json::to_vec(&json!({
        "Pod": {
            "metadata": {
                "name": "agent-x", "namespace": "fast-sandbox-system", "uid": "7f0c2b8e",
                "labels": {"sandbox.fast.io/role": "agent", "sandbox.fast.io/pool": "pool",
                           "sandbox.fast.io/pool-namespace": "team-a"},
                "annotations": {"sandbox.fast.io/slots": "16"},
                "ownerReferences": [{"apiVersion": "sandbox.fast.io/v1alpha1", "kind": "SandboxPool", "name": "pool", "uid": "0e7d", "controller": true}]
            },
            "spec": {
                "containers": [{"name": "agent", "image": "fast-sandbox/agent:dev", "imagePullPolicy": "Never",
                                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                                "securityContext": {"privileged": true}}],
                "schedulerName": "default-scheduler", "priority": 0
            },
            "status": {"phase": "Pending"}
        },
        "Nodes": null,
        "NodeNames": names
    }))
    .unwrap()
}

fn report_percentiles() {
    for n in SIZES {
        let ext = Extender::new(index(n), None);
        let body = request(n);
        let mut samples: Vec<Duration> = Vec::with_capacity(2_000);
        for _ in 0..50 {
            black_box(ext.prioritize(&body, Utc::now()).unwrap());
        }
        for _ in 0..2_000 {
            let t = Instant::now();
            black_box(ext.prioritize(&body, Utc::now()).unwrap());
            samples.push(t.elapsed());
        }
        samples.sort();
        let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        println!(
            "prioritize verb, {n} nodes x {IMAGES_PER_NODE} images, request {} KiB: p50 {:?} p99 {:?} max {:?}",
            body.len() / 1024,
            pct(0.50),
            pct(0.99),
            samples[samples.len() - 1]
        );
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("prioritize");
    for n in SIZES {
        let idx = index(n);
        let agent = AgentPod {
            pool: PoolKey::new("team-a", "pool"),
            images: vec!["docker.io/fast-sandbox/agent:dev".into()],
            never_pulled: Vec::new(),
            // Named, so each call also records the assumed placement.
            name: "agent-1".into(),
            namespace: "fast-sandbox-system".into(),
        };
        let names: Vec<String> = (0..n).map(|i| format!("node-{i:05}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        group.bench_with_input(BenchmarkId::new("score", n), &n, |b, _| {
            b.iter(|| black_box(idx.prioritize(&agent, &names, Utc::now())))
        });
        let ext = Extender::new(idx.clone(), None);
        let body = request(n);
        group.bench_with_input(BenchmarkId::new("verb", n), &n, |b, _| {
            b.iter(|| black_box(ext.prioritize(&body, Utc::now()).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    report_percentiles();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
