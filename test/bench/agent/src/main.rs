//! Create→running latency of sandboxes through the agent's HTTPS API, side
//! by side with `ctr run -d` on the same containerd (the naive floor), at
//! concurrency 1 and 8. Each agent lever can be switched off to measure
//! what it buys: pre-started sandboxes (the stock), warm snapshots; and the
//! one shared runc shim (off by default) switched on. Back to back, a create meets a stock the previous one
//! drained; "paced" waits until a pre-started sandbox is ready before each
//! (untimed), the steady state of arrivals slower than a refill.
//!
//! Needs root and a containerd with the test image; run it through the
//! agent's test script:
//!
//! ```text
//! agent/tests/containerd.sh run -- cargo run --release -p fast-sandbox-bench-agent -- --runs 100
//! ```
//!
//! Prints a Markdown table and writes it with a JSON copy to `--out-dir`.
//!
//! With `--mode burst` it issues `--runs` creates at once from
//! `--concurrency` workers and reports when all are Running, against the
//! same burst of `ctr run -d`; with `--mode memory`, what a pre-started
//! sandbox costs while it waits.
//!
//! With `--mode egress` it runs itself again in a network namespace of its
//! own (as an agent pod has) and measures create→running of sandboxes
//! with `network.mode: Egress` against ones without, claimed and cold.
//!
//! With `--mode userns` it measures create→running of sandboxes in user
//! namespaces of their own against host users, claimed and cold.
//!
//! With `--mode interactive` it measures the exec round trip of `/bin/true`
//! through the agent's API against `ctr task exec` into the same container
//! (same containerd), and file write/read throughput (1 MiB and 100 MiB).

use anyhow::bail;
use clap::Parser;

mod args;
mod bench_agent;
mod burst;
mod create;
mod egress;
mod interactive;
mod memory;
mod series;
mod userns;

// The mode modules import these from the crate root.
use args::Args;
use series::{Run, ctr_series, measure, report};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The agents' warnings (a stock that cannot be built) go to stderr.
    fast_sandbox_server::telemetry::init(fast_sandbox_server::telemetry::LogFormat::Text);
    match args.mode.as_str() {
        "create" => create::bench(&args).await,
        "interactive" => interactive::bench(&args).await,
        "burst" => burst::bench(&args).await,
        "memory" => memory::bench(&args).await,
        "egress" => egress::bench(&args).await,
        "userns" => userns::bench(&args).await,
        other => {
            bail!("unknown --mode {other:?}: create, burst, memory, interactive, egress or userns")
        }
    }
}
