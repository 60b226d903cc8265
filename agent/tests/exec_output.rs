//! 50 MiB through one exec with a client that stops reading for a while:
//! nothing is lost, the process is held back (backpressure) instead of the
//! agent buffering, and the memory of the agent (served in this process,
//! which holds nothing else) stays bounded. A test binary of its own, so no
//! other test's memory shows in the measurement.

mod support;

use std::time::Duration;

use fast_sandbox_agent::client::ExecEvent;
use support::{TestAgent, env, exec, exec_request, request, stdout};

/// One line of the output: 64 bytes, so 1024 of them fill 64 KiB.
const LINE: &[u8; 64] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\n";
/// Blocks of 64 KiB the process writes: 50 MiB.
const BLOCKS: usize = 800;
const TOTAL: usize = BLOCKS * 64 * 1024;
/// What may be in flight between the process and this client while it does
/// not read: the FIFO (64 KiB), the shim's copy buffer (32 KiB), the
/// agent's queue (4 frames of 64 KiB), HTTP/2 windows and send buffers
/// (the client's stream window is 2 MiB) and TLS records. Far below this.
const MAX_IN_FLIGHT: usize = 8 << 20;
/// Growth of this process's resident memory allowed over the run. Holding
/// the output would take 50 MiB; the in-flight bound plus allocator slack
/// fits well under this.
const MAX_RSS_GROWTH_KIB: u64 = 24 << 10;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

async fn progress(a: &TestAgent) -> usize {
    stdout(&exec(&a.client, "big", &["cat", "/tmp/progress"]).await)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[tokio::test]
async fn fifty_mib_arrive_whole_with_bounded_memory_and_backpressure() {
    let env = env();
    let a = TestAgent::start(&env, "exec-output", 2).await;
    a.client
        .create(&request(&env, "big", &["sleep", "100000"]))
        .await
        .unwrap()
        .1
        .unwrap();
    let line = String::from_utf8_lossy(&LINE[..63]).into_owned();
    let script = format!(
        "echo 0 > /tmp/progress; i=0; while [ $i -lt {BLOCKS} ]; do yes {line} | head -c 65536; i=$((i+1)); echo $i > /tmp/progress; done"
    );
    let rss_before = rss_kib();
    let mut s = a
        .client
        .exec("big", &exec_request(&["sh", "-c", &script]))
        .await
        .unwrap()
        .unwrap();
    let mut received = 0usize;
    let mut peak_rss = 0;
    let check = |data: &[u8], received: &mut usize| {
        for (i, b) in data.iter().enumerate() {
            let at = *received + i;
            assert_eq!(*b, LINE[at % LINE.len()], "byte {at} differs");
        }
        *received += data.len();
    };
    // Read the first MiB, then stop reading.
    while received < 1 << 20 {
        match s.output.next().await.unwrap().unwrap() {
            ExecEvent::Stdout(b) => check(&b, &mut received),
            other => panic!("{other:?}"),
        }
    }
    // The process stops advancing: its writes block on a full pipe.
    // Each sample is an exec of its own, tens of milliseconds apart.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (mut last, mut stable) = (usize::MAX, 0);
    while stable < 5 {
        let p = progress(&a).await;
        stable = if p == last { stable + 1 } else { 0 };
        last = p;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer was not held back within 30s (progress {p} of {BLOCKS})"
        );
    }
    let written = last * 64 * 1024;
    assert!(
        written < TOTAL,
        "the process wrote everything while nobody read"
    );
    assert!(
        written - received < MAX_IN_FLIGHT,
        "{} bytes in flight while the client did not read",
        written - received
    );
    peak_rss = peak_rss.max(rss_kib());
    // Read the rest.
    let status = loop {
        match s.output.next().await.unwrap().unwrap() {
            ExecEvent::Stdout(b) => {
                check(&b, &mut received);
                if received % (8 << 20) < b.len() {
                    peak_rss = peak_rss.max(rss_kib());
                }
            }
            ExecEvent::Stderr(b) => panic!("stderr: {}", String::from_utf8_lossy(&b)),
            ExecEvent::Status(st) => break st,
        }
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(received, TOTAL);
    let growth = peak_rss.saturating_sub(rss_before);
    eprintln!("RSS before {rss_before} KiB, peak {peak_rss} KiB, growth {growth} KiB");
    assert!(
        growth < MAX_RSS_GROWTH_KIB,
        "resident memory grew by {growth} KiB streaming 50 MiB"
    );
    let metrics = a.registry.render();
    let counted: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fast_sandbox_agent_exec_bytes_total{channel=\"stdout\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(counted >= TOTAL, "{counted}");
    a.client.delete("big", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}
