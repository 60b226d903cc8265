//! Shared set-up of the webhook benchmarks: a large placement index.

use fast_sandbox_placement::{AgentState, Index};

/// Pool key used by the benchmarks.
pub const POOL: &str = "bench/pool";

/// Shape of a benchmark index.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Agents, all in [`POOL`].
    pub agents: usize,
    /// Images cached per agent.
    pub images_per_agent: usize,
    /// Distinct images over the pool.
    pub distinct_images: usize,
    /// Slots per agent.
    pub slots: u32,
}

/// 10,000 agents with 10 images each out of 1,000: 100,000 cache entries,
/// 100 holders per image.
pub const LARGE: Shape = Shape {
    agents: 10_000,
    images_per_agent: 10,
    distinct_images: 1_000,
    slots: 16,
};

/// Name of image `i`.
pub fn image(i: usize) -> String {
    format!("registry.example.com/team/app-{i}:v1")
}

/// Builds an index of the given shape.
pub fn index(shape: Shape) -> Index {
    let idx = Index::new();
    idx.upsert_pool(POOL);
    for a in 0..shape.agents {
        let images = (0..shape.images_per_agent)
            .map(|k| image((a * shape.images_per_agent + k) % shape.distinct_images))
            .collect();
        idx.upsert_agent(AgentState {
            pool_key: POOL.into(),
            pod_name: format!("agent-{a}"),
            node_name: format!("node-{}", a / 4),
            ready: true,
            draining: false,
            slots_total: shape.slots,
            images,
        });
    }
    idx
}
