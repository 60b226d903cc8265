//! What egress costs a create: the agent runs in a network namespace of
//! its own, as in its pod (the benchmark runs itself again under
//! `unshare --net`), and each configuration is measured with sandboxes
//! asking for `network.mode: Egress` and without, beside `ctr run -d`.

use std::process::Command;

use anyhow::{Context, bail};
use fast_sandbox_agent::egress::EgressConfig;
use fast_sandbox_api::network::{NetworkMode, SandboxNetwork};

use crate::{Args, Run, ctr_series, measure, report};

/// Set in the run inside the benchmark's own network namespace.
const INSIDE: &str = "FAST_SANDBOX_BENCH_NETNS";

/// Runs the egress series, inside a network namespace of the benchmark's
/// own.
pub async fn bench(args: &Args) -> anyhow::Result<()> {
    if std::env::var_os(INSIDE).is_none() {
        let status = Command::new("unshare")
            .arg("--net")
            .arg("--")
            .arg(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env(INSIDE, "1")
            .status()
            .context("running unshare (util-linux)")?;
        if !status.success() {
            bail!("the benchmark in its network namespace failed: {status}");
        }
        return Ok(());
    }
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()?;
    if !up.success() {
        bail!("ip link set lo up failed");
    }
    let egress = SandboxNetwork {
        mode: NetworkMode::Egress,
        ..Default::default()
    };
    let mut results = Vec::new();
    let c = args.concurrency.first().copied().unwrap_or(1);
    results.push(ctr_series(args, c).await?);
    for (i, (name, stock, network)) in [
        ("agent, claimed", true, None),
        ("agent, claimed, egress", true, Some(&egress)),
        ("agent, no stock", false, None),
        ("agent, no stock, egress", false, Some(&egress)),
    ]
    .into_iter()
    .enumerate()
    {
        let tag = format!("e{i}");
        // Paced with a stock: each create finds a pre-started sandbox, so
        // the series shows what egress adds to a claim.
        let run = Run {
            tag: &tag,
            name,
            concurrency: c,
            paced: stock,
            network,
        };
        let s = measure(args, &run, |cfg| {
            if !stock {
                cfg.stock_size = 0;
            }
            cfg.egress = Some(EgressConfig {
                nft: "nft".into(),
                denied: Vec::new(),
                resolv_conf: "/etc/resolv.conf".into(),
                sysctl_net: "/proc/sys/net".into(),
            });
        })
        .await?;
        results.push(s);
    }
    report(args, &results, "agent-egress")
}
