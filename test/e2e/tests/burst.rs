//! A hundred sandboxes created at once in one pool all run, each exactly once,
//! and leave nothing behind when deleted. Prints the create→Running
//! latencies seen by a client watching.

use std::collections::BTreeSet;
use std::time::Duration;

use fast_sandbox_api::FailurePolicy;
use fast_sandbox_e2e::history::percentile;
use fast_sandbox_e2e::scenario::{
    BurstShape, Stage, all_running, create_all, delete_all, latencies, latency_line, sleeper,
    stage, violations_of_running_once,
};
use fast_sandbox_e2e::{cluster_client, delete_namespace};

const BURST: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_at_once_all_run_exactly_once_with_a_bounded_tail() {
    let client = cluster_client("burst").await;
    let Stage { ns, sbx, history } = stage(&client, "e2e-burst", (2, 3), 50).await.unwrap();

    let names: BTreeSet<String> = (0..BURST).map(|i| format!("b-{i:03}")).collect();
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
        .wait(Duration::from_secs(90), "all 100 Running", |t| {
            all_running(t, &names)
        })
        .await
        .unwrap();
    let lat = latencies(&burst, &tracks);
    eprintln!(
        "{}; {} admitted unbound",
        latency_line("burst of 100 create->Running", &lat),
        burst.unbound.len()
    );

    // Every sandbox of the burst runs, and the slowest are not far behind
    // the median: no sandbox waits on a timer or a retry storm.
    let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
    assert!(
        p99 <= p50 * 3,
        "p99 {p99:?} is more than 3x p50 {p50:?} over a burst of {BURST}"
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
