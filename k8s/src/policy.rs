//! The operator's [`Policy`], kept current from its ConfigMap in the
//! operator's namespace. The webhook and the controller read the same one.
//!
//! No ConfigMap means the built-in defaults. A document that does not parse
//! keeps the last good policy in force and is reported (log and metric),
//! so a typo never opens anything up nor stops admission.

use std::sync::{Arc, RwLock};

use fast_sandbox_api::policy::{POLICY_CONFIG_MAP, POLICY_KEY, Policy};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use prometheus_client::metrics::counter::Counter;

/// The current policy, shared by a process's parts.
#[derive(Clone, Debug, Default)]
pub struct SharedPolicy {
    inner: Arc<RwLock<Policy>>,
    rejected: Counter,
}

impl SharedPolicy {
    /// The built-in defaults until the ConfigMap is read; registers
    /// `policy_rejected_total` (documents that did not parse).
    pub fn register(registry: &fast_sandbox_server::Registry) -> Self {
        let me = Self::default();
        registry.with(|r| {
            r.register(
                "policy_rejected",
                "Policy documents that did not parse (the last good one stays in force)",
                me.rejected.clone(),
            )
        });
        me
    }

    /// A fixed policy (tests, tools).
    pub fn fixed(policy: Policy) -> Self {
        Self {
            inner: Arc::new(RwLock::new(policy)),
            rejected: Counter::default(),
        }
    }

    /// The policy in force.
    pub fn get(&self) -> Policy {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies a ConfigMap (`None`: deleted, so the defaults). Returns
    /// whether the policy in force changed.
    pub fn apply(&self, cm: Option<&ConfigMap>) -> bool {
        let doc = cm
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get(POLICY_KEY));
        let next = match doc {
            None => Policy::default(),
            Some(doc) => match Policy::parse(doc) {
                Ok(p) => p,
                Err(e) => {
                    self.rejected.inc();
                    tracing::error!(error = %e, "policy refused; the previous one stays in force");
                    return false;
                }
            },
        };
        let mut cur = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if *cur == next {
            return false;
        }
        tracing::info!(policy = ?next, "policy in force");
        *cur = next;
        true
    }
}

/// Keeps `policy` in step with ConfigMap [`POLICY_CONFIG_MAP`] of
/// `namespace` until the process ends; `changed` runs after each change.
pub async fn run(client: Client, namespace: String, policy: SharedPolicy, changed: impl Fn()) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={POLICY_CONFIG_MAP}"));
    let mut stream = std::pin::pin!(watcher::watcher(api, cfg).default_backoff());
    let mut listed: Option<bool> = None;
    while let Some(ev) = stream.next().await {
        let did = match ev {
            Ok(Event::Apply(cm)) | Ok(Event::InitApply(cm)) => {
                listed = listed.map(|_| true);
                policy.apply(Some(&cm))
            }
            Ok(Event::Delete(_)) => policy.apply(None),
            Ok(Event::Init) => {
                listed = Some(false);
                false
            }
            Ok(Event::InitDone) => {
                // Listed and absent: the defaults.
                let absent = listed == Some(false);
                listed = None;
                absent && policy.apply(None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching the policy ConfigMap failed; retrying");
                false
            }
        };
        if did {
            changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cm(doc: &str) -> ConfigMap {
        ConfigMap {
            data: Some(BTreeMap::from([(POLICY_KEY.to_string(), doc.to_string())])),
            ..Default::default()
        }
    }

    #[test]
    fn a_bad_document_keeps_the_last_good_policy() {
        let p = SharedPolicy::default();
        assert!(p.apply(Some(&cm("namespaceDefaults: {maxAgents: 3}"))));
        assert_eq!(p.get().caps("x").max_agents, 3);
        assert!(!p.apply(Some(&cm("namespaceDefaults: {maxAgents: lots}"))));
        assert_eq!(p.get().caps("x").max_agents, 3);
        assert_eq!(p.rejected.get(), 1);
        assert!(p.apply(None));
        assert_eq!(p.get(), Policy::default());
    }
}
