//! Where a create's time goes, from the components' own histograms: each
//! Fast Sandbox pod's `/metrics` is read through the apiserver's pod proxy
//! before and after a series, and the difference gives that series' share.
//! So a regression in the end-to-end numbers points at its stage.

use std::collections::BTreeMap;

use fast_sandbox_api::wellknown::{LABEL_POOL, LABEL_POOL_NAMESPACE};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

/// Namespace of the Fast Sandbox components and agents.
const SYSTEM_NAMESPACE: &str = "fast-sandbox-system";
/// Port of every component's `/metrics`.
const OPS_PORT: u16 = 9090;

/// The histograms read, with what each measures, in hot-path order.
pub const STAGES: [(&str, &str); 12] = [
    (
        "fast_sandbox_webhook_admission_duration_seconds",
        "webhook: answer the AdmissionReview (placement)",
    ),
    (
        "fast_sandbox_controller_sandbox_watch_delay_seconds",
        "binding → the controller's reconcile",
    ),
    (
        "fast_sandbox_controller_agent_create_seconds",
        "controller: the agent's create call",
    ),
    (
        "fast_sandbox_agent_create_seconds{stage=\"claim\"}",
        "agent: claim a pre-started sandbox",
    ),
    (
        "fast_sandbox_agent_create_seconds{stage=\"claim_check\"}",
        "agent: claim, node-wide check",
    ),
    (
        "fast_sandbox_agent_create_seconds{stage=\"relabel\"}",
        "agent: claim, relabel (commit)",
    ),
    (
        "fast_sandbox_agent_create_seconds{stage=\"launch\"}",
        "agent: claim, limits and launch",
    ),
    (
        "fast_sandbox_agent_create_seconds{stage=\"snapshot\"}",
        "agent: rootfs snapshot",
    ),
    (
        "fast_sandbox_agent_create_seconds{stage=\"task_create\"}",
        "agent: task create (shim, runc create)",
    ),
    (
        "fast_sandbox_agent_create_seconds{stage=\"task_start\"}",
        "agent: task start",
    ),
    (
        "fast_sandbox_controller_status_write_seconds",
        "controller: status write",
    ),
    (
        "fast_sandbox_controller_sandbox_create_to_running_seconds",
        "binding → status Running written",
    ),
];

/// The agents' count of creates by path: claimed, or why it went cold.
const CREATE_PATHS: &str = "fast_sandbox_agent_stock_creates_total";

/// Cumulative bucket counts by upper bound, summed over every pod, per
/// histogram of [`STAGES`]; and the agents' creates by path.
#[derive(Clone, Debug, Default)]
pub struct Snapshot(
    BTreeMap<&'static str, Vec<(f64, f64)>>,
    BTreeMap<String, f64>,
);

/// The concatenated `/metrics` of the running Fast Sandbox pods that match
/// `selector` (all of them when empty).
async fn metrics_text(client: &Client, selector: &str) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let mut text = String::new();
    for p in pods.list(&ListParams::default().labels(selector)).await? {
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if !running || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let path = format!(
            "/api/v1/namespaces/{SYSTEM_NAMESPACE}/pods/{}:{OPS_PORT}/proxy/metrics",
            p.name_any()
        );
        let req = http::Request::get(path).body(Vec::new())?;
        // Pods without the ops port (the certs Job) answer with an error.
        if let Ok(t) = client.request_text(req).await {
            text.push_str(&t);
            text.push('\n');
        }
    }
    Ok(text)
}

/// Reads every Fast Sandbox pod's metrics (components and agents).
pub async fn snapshot(client: &Client) -> anyhow::Result<Snapshot> {
    let text = metrics_text(client, "").await?;
    let mut s = Snapshot::default();
    for (name, _) in STAGES {
        s.0.insert(name, buckets(&text, name));
    }
    s.1 = paths(&text);
    Ok(s)
}

/// Pre-started sandboxes ready on the agents of pool `ns/pool`.
pub async fn stock_ready(client: &Client, ns: &str, pool: &str) -> anyhow::Result<f64> {
    let selector = format!("{LABEL_POOL_NAMESPACE}={ns},{LABEL_POOL}={pool}");
    let text = metrics_text(client, &selector).await?;
    Ok(gauge_sum(&text, "fast_sandbox_agent_stock_ready"))
}

/// The sum of every unlabelled sample of gauge `name`.
fn gauge_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// [`CREATE_PATHS`] summed over every pod, by its `path` label.
fn paths(text: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{CREATE_PATHS}{{path=\"");
    let mut sums = BTreeMap::new();
    for line in text.lines() {
        let Some((path, value)) = line
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once("\"} "))
        else {
            continue;
        };
        if let Ok(n) = value.trim().parse::<f64>() {
            *sums.entry(path.to_string()).or_insert(0.0) += n;
        }
    }
    sums
}

/// How many creates between `before` and `after` took each path (claimed,
/// or the reason they went cold).
pub fn paths_between(before: &Snapshot, after: &Snapshot) -> BTreeMap<String, f64> {
    after
        .1
        .iter()
        .map(|(p, n)| (p.clone(), n - before.1.get(p).copied().unwrap_or(0.0)))
        .filter(|(_, n)| *n > 0.0)
        .collect()
}

/// The cumulative `le` buckets of histogram `selector` (a name, or a name
/// with one `{label="value"}`) summed over every series and pod, in
/// Prometheus text format.
fn buckets(text: &str, selector: &str) -> Vec<(f64, f64)> {
    let (name, label) = match selector.split_once('{') {
        Some((n, l)) => (n, Some(l.trim_end_matches('}'))),
        None => (selector, None),
    };
    let bucket = format!("{name}_bucket{{");
    let mut sums: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&bucket) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        if label.is_some_and(|l| !labels.split(',').any(|x| x == l)) {
            continue;
        }
        let Some(le) = labels
            .split(',')
            .find_map(|x| x.strip_prefix("le=\""))
            .map(|x| x.trim_end_matches('"'))
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        let Ok(count) = value.trim().parse::<f64>() else {
            continue;
        };
        let e = sums.entry(le.to_bits()).or_insert((le, 0.0));
        e.1 += count;
    }
    let mut v: Vec<(f64, f64)> = sums.into_values().collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// One stage's share of a series: how many observations, and the bucket
/// bounds that hold its median and 99th percentile.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stage {
    /// What the stage is.
    pub what: &'static str,
    /// Observations during the series.
    pub count: f64,
    /// Upper bound of the bucket holding the median, milliseconds.
    pub p50_le_ms: f64,
    /// Upper bound of the bucket holding the 99th percentile, milliseconds.
    pub p99_le_ms: f64,
}

/// The stages of what happened between `before` and `after`.
pub fn between(before: &Snapshot, after: &Snapshot) -> Vec<Stage> {
    STAGES
        .iter()
        .map(|(name, what)| {
            let a = after.0.get(name).cloned().unwrap_or_default();
            let b = before.0.get(name).cloned().unwrap_or_default();
            let diff: Vec<(f64, f64)> = a
                .iter()
                .map(|(le, n)| {
                    let old = b.iter().find(|(l, _)| l == le).map_or(0.0, |(_, n)| *n);
                    (*le, n - old)
                })
                .collect();
            let count = diff.last().map_or(0.0, |(_, n)| *n);
            Stage {
                what,
                count,
                p50_le_ms: quantile(&diff, 0.5) * 1000.0,
                p99_le_ms: quantile(&diff, 0.99) * 1000.0,
            }
        })
        .collect()
}

fn quantile(cumulative: &[(f64, f64)], q: f64) -> f64 {
    let total = cumulative.last().map_or(0.0, |(_, n)| *n);
    if total <= 0.0 {
        return f64::NAN;
    }
    cumulative
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map_or(f64::NAN, |(le, _)| *le)
}

/// A Markdown table of one series' stages.
pub fn table(title: &str, stages: &[Stage]) -> String {
    let mut s = format!(
        "{title}\n\n| stage | observations | p50 ≤ ms | p99 ≤ ms |\n|---|---:|---:|---:|\n"
    );
    for st in stages {
        s.push_str(&format!(
            "| {} | {:.0} | {} | {} |\n",
            st.what,
            st.count,
            bound(st.p50_le_ms),
            bound(st.p99_le_ms)
        ));
    }
    s
}

fn bound(ms: f64) -> String {
    if ms.is_nan() {
        "–".into()
    } else if ms.is_infinite() {
        "> 10000".into()
    } else {
        format!("{ms}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
# HELP fast_sandbox_agent_create_seconds Sandbox create latency by stage
fast_sandbox_agent_create_seconds_bucket{stage="task_create",le="0.01"} 2
fast_sandbox_agent_create_seconds_bucket{stage="task_create",le="0.025"} 9
fast_sandbox_agent_create_seconds_bucket{stage="task_create",le="+Inf"} 10
fast_sandbox_agent_create_seconds_bucket{stage="snapshot",le="0.01"} 10
fast_sandbox_agent_create_seconds_bucket{stage="snapshot",le="+Inf"} 10
fast_sandbox_agent_create_seconds_bucket{stage="task_create",le="0.01"} 1
fast_sandbox_agent_create_seconds_bucket{stage="task_create",le="0.025"} 1
fast_sandbox_agent_create_seconds_bucket{stage="task_create",le="+Inf"} 1
"#;

    #[test]
    fn buckets_sum_over_pods_and_pick_the_label() {
        let b = buckets(
            TEXT,
            "fast_sandbox_agent_create_seconds{stage=\"task_create\"}",
        );
        assert_eq!(b, vec![(0.01, 3.0), (0.025, 10.0), (f64::INFINITY, 11.0)]);
        assert_eq!(quantile(&b, 0.5), 0.025);
        assert_eq!(quantile(&b, 0.99), f64::INFINITY);
    }

    #[test]
    fn gauges_sum_over_pods() {
        let text = "# TYPE fast_sandbox_agent_stock_ready gauge\n\
                    fast_sandbox_agent_stock_ready 3\n\
                    fast_sandbox_agent_stock_ready_other 9\n\
                    fast_sandbox_agent_stock_ready 4\n";
        assert_eq!(gauge_sum(text, "fast_sandbox_agent_stock_ready"), 7.0);
    }

    #[test]
    fn create_paths_sum_over_pods() {
        let text = "fast_sandbox_agent_stock_creates_total{path=\"claimed\"} 3\n\
                    fast_sandbox_agent_stock_creates_total{path=\"empty\"} 1\n\
                    fast_sandbox_agent_stock_creates_total{path=\"claimed\"} 4\n";
        let before = Snapshot(BTreeMap::new(), BTreeMap::from([("claimed".into(), 2.0)]));
        let after = Snapshot(BTreeMap::new(), paths(text));
        assert_eq!(
            paths_between(&before, &after),
            BTreeMap::from([("claimed".into(), 5.0), ("empty".into(), 1.0)])
        );
    }

    #[test]
    fn a_series_is_the_difference() {
        let mut before = Snapshot::default();
        before.0.insert(
            "fast_sandbox_controller_status_write_seconds",
            vec![(0.005, 5.0), (f64::INFINITY, 5.0)],
        );
        let mut after = Snapshot::default();
        after.0.insert(
            "fast_sandbox_controller_status_write_seconds",
            vec![(0.005, 6.0), (f64::INFINITY, 15.0)],
        );
        let st = between(&before, &after);
        let w = st
            .iter()
            .find(|s| s.what == "controller: status write")
            .unwrap();
        assert_eq!(w.count, 10.0);
        assert!(w.p50_le_ms.is_infinite());
    }
}
