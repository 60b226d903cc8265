//! The create mode: create→running of the agent with each of its levers
//! switched off in turn, beside `ctr run -d`, at each concurrency.

use fast_sandbox_agent::Config;

use crate::{Args, Run, ctr_series, measure, report};

/// Changes one lever of an agent configuration.
type Tune = Box<dyn Fn(&mut Config)>;

/// The writable layer cap of the capped series (a tmpfs upper layer).
const LAYER_CAP: u64 = 64 << 20;

/// A measured agent configuration: its name, its levers, and whether each
/// create waits (untimed) for a ready pre-started sandbox.
struct Variant {
    name: &'static str,
    tune: Tune,
    paced: bool,
}

/// Measures every variant at each `--concurrency` and writes the table.
pub async fn bench(args: &Args) -> anyhow::Result<()> {
    let variants = [
        Variant {
            name: "agent (all levers)",
            tune: Box::new(|_: &mut Config| {}),
            paced: false,
        },
        Variant {
            name: "agent (all levers), paced",
            tune: Box::new(|_: &mut Config| {}),
            paced: true,
        },
        Variant {
            name: "agent, 64 MiB layer cap",
            tune: Box::new(|c: &mut Config| c.stock_layer_cap = Some(LAYER_CAP)),
            paced: false,
        },
        Variant {
            name: "agent, no stock",
            tune: Box::new(|c: &mut Config| c.stock_size = 0),
            paced: false,
        },
        Variant {
            name: "agent, no stock, 64 MiB layer cap",
            tune: Box::new(|c: &mut Config| {
                c.stock_size = 0;
                c.stock_layer_cap = Some(LAYER_CAP);
            }),
            paced: false,
        },
        Variant {
            name: "agent, no stock, one shared shim (--shim-group)",
            tune: Box::new(|c: &mut Config| {
                c.stock_size = 0;
                c.shim_group = true;
            }),
            paced: false,
        },
        Variant {
            name: "agent, no stock, no warm snapshots",
            tune: Box::new(|c: &mut Config| {
                c.stock_size = 0;
                c.warm_snapshots = 0;
            }),
            paced: false,
        },
    ];
    let mut results = Vec::new();
    for &c in &args.concurrency {
        results.push(ctr_series(args, c).await?);
        for (i, v) in variants.iter().enumerate() {
            // Pacing is the steady state of one client at a time.
            if v.paced && c > 1 {
                continue;
            }
            let run = Run {
                tag: &format!("v{i}"),
                name: v.name,
                concurrency: c,
                paced: v.paced,
                network: None,
            };
            results.push(measure(args, &run, |cfg| (v.tune)(cfg)).await?);
        }
    }
    report(args, &results, "agent-create")
}
