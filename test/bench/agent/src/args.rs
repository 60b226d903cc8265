//! The benchmark's settings, from its command line and environment.

use std::path::PathBuf;

use clap::Parser;

/// Benchmark settings.
#[derive(Parser, Debug, Clone)]
#[command(about)]
pub struct Args {
    /// containerd socket.
    #[arg(long, env = "FAST_SANDBOX_CONTAINERD_SOCK")]
    pub socket: PathBuf,
    /// containerd namespace holding the image.
    #[arg(
        long,
        env = "FAST_SANDBOX_TEST_NAMESPACE",
        default_value = "fast-sandbox-test"
    )]
    pub namespace: String,
    /// Image to start.
    #[arg(
        long,
        env = "FAST_SANDBOX_TEST_IMAGE",
        default_value = "docker.io/fast-sandbox/busybox:dev"
    )]
    pub image: String,
    /// Measured creates per configuration and concurrency.
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
    /// Unmeasured creates before each series.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub concurrency: Vec<usize>,
    /// Where the Markdown and JSON results go.
    #[arg(long, default_value = "target/bench-agent")]
    pub out_dir: PathBuf,
    /// Pre-started sandboxes per image in `burst` mode's stock variants.
    #[arg(long, value_delimiter = ',', default_value = "4,32")]
    pub stock_sizes: Vec<usize>,
    /// `create` (create to running), `burst`, `memory`, `interactive`
    /// (exec and files), `egress` (create to running with and without a
    /// network, the agent in a network namespace of its own) or `userns`
    /// (create to running in user namespaces and as host users).
    #[arg(long, default_value = "create")]
    pub mode: String,
}
