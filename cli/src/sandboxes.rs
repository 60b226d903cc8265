//! `kubectl sandbox ls` and `kubectl sandbox run`: sandboxes as a table,
//! and a sandbox created, awaited until Ready (through a watch), used and
//! optionally deleted, like `kubectl run --rm -it`.

use std::time::Duration;

use chrono::Utc;
use fast_sandbox_api::wellknown::condition;
use fast_sandbox_api::{EnvVar, NetworkMode, Sandbox, SandboxNetwork, SandboxPhase, SandboxSpec};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, ResourceExt};

use crate::access::{self, AccessError};

/// `kubectl`-style age: `45s`, `12m`, `5h`, `3d`.
pub fn age(created: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    let Some(t) = created else {
        return "<unknown>".into();
    };
    let secs = Utc::now().timestamp() - t.0.as_second();
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The `ls` table: a header and one line per sandbox, columns aligned.
pub fn table(sandboxes: &[Sandbox], with_namespace: bool) -> String {
    let mut rows = vec![{
        let mut h = vec!["NAME", "PHASE", "AGE", "AGENT", "NODE"];
        if with_namespace {
            h.insert(0, "NAMESPACE");
        }
        h.into_iter().map(str::to_string).collect::<Vec<_>>()
    }];
    for sb in sandboxes {
        let agent = sb.spec.agent_ref.as_ref();
        let mut r = vec![
            sb.name_any(),
            sb.status
                .as_ref()
                .and_then(|s| s.phase)
                .map_or_else(|| "Pending".to_string(), |p| p.to_string()),
            age(sb.metadata.creation_timestamp.as_ref()),
            agent.map_or("<none>".into(), |a| a.pod_name.clone()),
            agent.map_or("<none>".into(), |a| a.node_name.clone()),
        ];
        if with_namespace {
            r.insert(0, sb.namespace().unwrap_or_default());
        }
        rows.push(r);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, v)| format!("{v:<w$}", w = widths[c]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// Sandboxes of `namespace`, or of every namespace.
pub async fn list(
    client: &kube::Client,
    namespace: Option<&str>,
) -> Result<Vec<Sandbox>, AccessError> {
    let api: Api<Sandbox> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut items = api
        .list(&ListParams::default())
        .await
        .map_err(access::api_error)?
        .items;
    items.sort_by_key(|s| (s.namespace(), s.name_any()));
    Ok(items)
}

/// What `run` creates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Image (present on the nodes).
    pub image: String,
    /// SandboxPool of the namespace.
    pub pool: String,
    /// `NAME=VALUE` pairs.
    pub env: Vec<String>,
    /// The sandbox's own process (it must keep running for `exec`).
    pub keep_alive: Vec<String>,
    /// How long to wait until Ready.
    pub timeout: Duration,
    /// Outbound IPv4 (`network.mode: Egress`); unset, the pool's default.
    pub egress: bool,
    /// IPv4 CIDRs an egress sandbox may reach (all when empty).
    pub allow: Vec<String>,
    /// IPv4 CIDRs an egress sandbox may not reach.
    pub deny: Vec<String>,
    /// `spec.terminationGracePeriodSeconds`.
    pub grace_period: Option<i64>,
}

/// The sandbox `run` creates.
pub fn sandbox(name: &str, opts: &RunOptions) -> Result<Sandbox, AccessError> {
    let mut env = Vec::new();
    for kv in &opts.env {
        let (n, v) = kv
            .split_once('=')
            .ok_or_else(|| AccessError::Usage(format!("--env {kv:?}: expected NAME=VALUE")))?;
        env.push(EnvVar {
            name: n.into(),
            value: v.into(),
        });
    }
    let policed = !(opts.allow.is_empty() && opts.deny.is_empty());
    if policed && !opts.egress {
        return Err(AccessError::Usage(
            "--allow and --deny police egress: add --egress".into(),
        ));
    }
    let network = opts.egress.then(|| SandboxNetwork {
        mode: NetworkMode::Egress,
        allow: opts.allow.clone(),
        deny: opts.deny.clone(),
    });
    Ok(Sandbox::new(
        name,
        SandboxSpec {
            image: opts.image.clone(),
            pool_ref: opts.pool.clone(),
            command: opts.keep_alive.clone(),
            env,
            network,
            termination_grace_period_seconds: opts.grace_period,
            ..Default::default()
        },
    ))
}

/// Creates sandbox `name` and waits until it is Ready; a sandbox that
/// fails first is reported with its reason.
pub async fn create_ready(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    opts: &RunOptions,
) -> Result<Sandbox, AccessError> {
    let api: Api<Sandbox> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &sandbox(name, opts)?)
        .await
        .map_err(access::api_error)?;
    let settled = |s: Option<&Sandbox>| {
        s.is_some_and(|s| {
            s.condition(condition::READY)
                .is_some_and(|c| c.status == "True")
                || s.phase().is_finished()
                || s.phase() == SandboxPhase::Lost
        })
    };
    let done = tokio::time::timeout(opts.timeout, await_condition(api.clone(), name, settled))
        .await
        .map_err(|_| {
            AccessError::Api(format!(
                "sandbox {name} was not Ready within {:?}; see kubectl describe sandbox {name}",
                opts.timeout
            ))
        })?
        .map_err(|e| AccessError::Protocol(format!("watching sandbox {name}: {e}")))?;
    let sb =
        done.ok_or_else(|| AccessError::Api(format!("sandbox {name} was deleted while starting")))?;
    if sb.phase() != SandboxPhase::Running {
        let st = sb.status.clone().unwrap_or_default();
        return Err(AccessError::Api(format!(
            "sandbox {name} is {}: {} {}",
            sb.phase(),
            st.reason.unwrap_or_default(),
            st.message.unwrap_or_default()
        )));
    }
    Ok(sb)
}

/// Deletes sandbox `name` (`run --rm`).
pub async fn delete(client: &kube::Client, namespace: &str, name: &str) -> Result<(), AccessError> {
    let api: Api<Sandbox> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(access::api_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_its_columns() {
        let mut a = Sandbox::new("a", SandboxSpec::default());
        a.metadata.namespace = Some("team".into());
        let mut b = Sandbox::new("longer-name", SandboxSpec::default());
        b.metadata.namespace = Some("team".into());
        b.spec.agent_ref = Some(fast_sandbox_api::AgentRef {
            pod_name: "p-1".into(),
            node_name: "n1".into(),
            ..Default::default()
        });
        let t = table(&[a, b], true);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("NAMESPACE   NAME          PHASE"),
            "{t}"
        );
        assert!(lines[2].contains("p-1") && lines[2].contains("n1"), "{t}");
        assert!(lines[1].contains("<none>"), "{t}");
    }

    #[test]
    fn run_sets_the_grace_period_only_when_given() {
        assert_eq!(
            sandbox("x", &RunOptions::default())
                .unwrap()
                .spec
                .termination_grace_period_seconds,
            None
        );
        let opts = RunOptions {
            grace_period: Some(0),
            ..Default::default()
        };
        assert_eq!(
            sandbox("x", &opts)
                .unwrap()
                .spec
                .termination_grace_period_seconds,
            Some(0)
        );
    }

    #[test]
    fn run_refuses_odd_env() {
        let opts = RunOptions {
            env: vec!["NOPE".into()],
            ..Default::default()
        };
        assert!(sandbox("x", &opts).is_err());
    }

    #[test]
    fn run_asks_for_egress_only_when_told() {
        let plain = sandbox("x", &RunOptions::default()).unwrap();
        assert_eq!(plain.spec.network, None);
        let opts = RunOptions {
            egress: true,
            deny: vec!["203.0.113.0/24".into()],
            ..Default::default()
        };
        let n = sandbox("x", &opts).unwrap().spec.network.unwrap();
        assert!(n.has_egress());
        assert_eq!(n.deny, ["203.0.113.0/24"]);
        let stray = RunOptions {
            allow: vec!["1.2.3.0/24".into()],
            ..Default::default()
        };
        assert!(sandbox("x", &stray).is_err());
    }
}
