//! What user namespaces cost a create: each configuration is measured with
//! sandboxes in user namespaces of their own (a slot lease, an idmapped
//! snapshot, the namespace made by runc) and as host users, beside
//! `ctr run -d`.

use fast_sandbox_agent::userns::IdRange;

use crate::{Args, Run, ctr_series, measure, report};

/// Runs the user namespace series.
pub async fn bench(args: &Args) -> anyhow::Result<()> {
    let mut results = Vec::new();
    let c = args.concurrency.first().copied().unwrap_or(1);
    results.push(ctr_series(args, c).await?);
    for (i, (name, stock, mapped)) in [
        ("agent, claimed, host users", true, false),
        ("agent, claimed, user namespace", true, true),
        ("agent, no stock, host users", false, false),
        ("agent, no stock, user namespace", false, true),
    ]
    .into_iter()
    .enumerate()
    {
        let tag = format!("u{i}");
        // Paced with a stock: each create finds a pre-started sandbox.
        let run = Run {
            tag: &tag,
            name,
            concurrency: c,
            paced: stock,
            network: None,
        };
        let s = measure(args, &run, |cfg| {
            if !stock {
                cfg.stock_size = 0;
            }
            cfg.user_namespaces = mapped.then(IdRange::default);
        })
        .await?;
        results.push(s);
    }
    report(args, &results, "agent-userns")
}
