//! Fifty sandboxes created at once in one pool all run, each exactly once,
//! and leave nothing behind when deleted. Prints the create→Running
//! latencies seen by a client watching.

use std::collections::BTreeSet;
use std::time::Duration;

use fast_sandbox_api::FailurePolicy;
use fast_sandbox_e2e::scenario::{
    BurstShape, Stage, all_running, create_all, delete_all, latencies, latency_line, sleeper,
    stage, violations_of_running_once,
};
use fast_sandbox_e2e::{client_or_skip, delete_namespace};

const BURST: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_at_once_all_run_exactly_once() {
    let Some(client) = client_or_skip("burst").await else {
        return;
    };
    let Stage { ns, sbx, history } = stage(&client, "e2e-burst", (2, 3), 32).await.unwrap();

    let names: BTreeSet<String> = (0..BURST).map(|i| format!("b-{i:02}")).collect();
    let burst = create_all(
        &sbx,
        names
            .iter()
            .map(|n| sleeper(n, "p", FailurePolicy::Manual))
            .collect(),
        BurstShape::default(),
        None,
    )
    .await
    .unwrap();
    let tracks = history
        .wait(Duration::from_secs(90), "all 50 Running", |t| {
            all_running(t, &names)
        })
        .await
        .unwrap();
    let lat = latencies(&burst, &tracks);
    eprintln!(
        "{}; {} admitted unbound",
        latency_line("burst of 50 create->Running", &lat),
        burst.unbound.len()
    );

    let bad = violations_of_running_once(&ns, &tracks, &names, true)
        .await
        .unwrap();
    assert!(bad.is_empty(), "not exactly once:\n{}", bad.join("\n"));

    let left = delete_all(&sbx, &history, &ns, Duration::from_secs(90))
        .await
        .unwrap();
    assert!(
        left.is_empty(),
        "containers outlived their sandboxes: {left:?}"
    );
    delete_namespace(&client, &ns).await;
}
