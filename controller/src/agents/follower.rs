//! The follower task of one agent: lists the agent's sandboxes, then
//! follows its event stream, reconnecting with backoff (and listing again)
//! when the stream breaks. What it learns is kept in the agent's view and
//! turned into reconcile triggers; containers of sandboxes that are gone
//! or bound elsewhere are deleted.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fast_sandbox_api::agent::{EventKind, SandboxEvent, SandboxInfo};
use kube::runtime::reflector::ObjectRef;

use super::{Agent, Agents};
use crate::janitor::Trigger;
use crate::transition::info_after_event;

/// Longest wait between reconnect attempts to an agent.
pub const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);

impl Agents {
    fn trigger_info(&self, info: &SandboxInfo) {
        if !info.name.is_empty() && !info.namespace.is_empty() {
            let _ = self
                .sandbox_tx
                .send(ObjectRef::new(&info.name).within(&info.namespace));
        }
    }

    fn apply_event(&self, agent: &Agent, ev: &SandboxEvent) {
        let Some(sb) = ev.sandbox.as_ref() else {
            return;
        };
        match info_after_event(ev) {
            Some(info) => {
                agent.view_mut().sandboxes.insert(info.uid.clone(), info);
            }
            None if ev.kind == EventKind::Deleted => agent.record_deleted(&sb.uid),
            None => return,
        }
        self.trigger_info(sb);
        if ev.kind == EventKind::Deleted {
            // A slot is free: sandboxes waiting for capacity may take it.
            let _ = self
                .pool_tx
                .send(ObjectRef::new(&agent.pool).within(&agent.namespace));
            self.trigger_waiting(&agent.namespace, &agent.pool);
        }
    }

    /// Deletes containers the agent holds for sandboxes that no longer
    /// exist or are now bound elsewhere (re-placed while this agent was
    /// unreachable), so no sandbox runs twice and none is left behind.
    async fn collect_orphans(self: Arc<Self>, agent: Arc<Agent>, listed: Vec<SandboxInfo>) {
        if !crate::context::store_ready(&self.sandboxes).await {
            return;
        }
        for info in listed {
            let obj = self
                .sandboxes
                .get(&ObjectRef::new(&info.name).within(&info.namespace));
            let ours = obj.as_ref().is_some_and(|sb| {
                sb.metadata.uid.as_deref() == Some(info.uid.as_str())
                    && sb
                        .spec
                        .agent_ref
                        .as_ref()
                        .is_some_and(|r| r.pod_name == agent.name)
            });
            if ours {
                continue;
            }
            tracing::info!(agent = %agent.name, sandbox = %info.name, namespace = %info.namespace, uid = %info.uid, "deleting orphaned container");
            match agent.client.delete(&info.uid, None).await {
                Ok(_) => agent.record_deleted(&info.uid),
                Err(e) => {
                    tracing::warn!(agent = %agent.name, uid = %info.uid, error = %e, "cannot delete orphaned container")
                }
            }
        }
    }

    /// Follows `agent` until it is dropped from the directory.
    pub(super) async fn follow(self: Arc<Self>, agent: std::sync::Weak<Agent>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(a) = agent.upgrade() else { return };
            match a.client.list().await {
                // A restarted agent answers before it has rebuilt its table
                // from containerd: an empty list then does not mean its
                // sandboxes are gone. Not synced until it is ready.
                Ok(list) if !list.agent.ready => {
                    tracing::debug!(agent = %a.name, "agent not ready (rebuilding its state); listing again")
                }
                Ok(list) => {
                    {
                        let mut v = a.view_mut();
                        v.reachable = true;
                        v.synced = true;
                        v.unreachable_since = None;
                        v.sandboxes = list
                            .sandboxes
                            .iter()
                            .map(|s| (s.uid.clone(), s.clone()))
                            .collect();
                    }
                    tracing::info!(agent = %a.name, namespace = %a.namespace, sandboxes = list.sandboxes.len(), "agent listed");
                    backoff = Duration::from_millis(100);
                    for s in &list.sandboxes {
                        self.trigger_info(s);
                    }
                    self.trigger_pod(&a.namespace, &a.name, Some(&a.pool), false);
                    tokio::spawn(Arc::clone(&self).collect_orphans(Arc::clone(&a), list.sandboxes));
                    if !a.node.is_empty() {
                        let _ = self.janitor_tx.send(Trigger::AgentListed(a.node.clone()));
                    }
                    match a.client.events(list.last_event_seq).await {
                        Ok(mut stream) => {
                            // Hold only a weak reference while waiting on the
                            // stream, so a removed agent is dropped.
                            let weak = Arc::downgrade(&a);
                            drop(a);
                            while let Some(item) = stream.next().await {
                                let Some(a) = weak.upgrade() else { return };
                                match item {
                                    Ok(ev) => self.apply_event(&a, &ev),
                                    Err(e) => {
                                        tracing::warn!(agent = %a.name, error = %e, "agent event stream broke");
                                        break;
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(agent = %a.name, error = %e, "cannot open agent event stream")
                        }
                    }
                }
                Err(e) => tracing::debug!(agent = %a.name, error = %e, "cannot list agent"),
            }
            let Some(a) = agent.upgrade() else { return };
            let newly = {
                let mut v = a.view_mut();
                let newly = v.reachable;
                v.reachable = false;
                v.unreachable_since.get_or_insert_with(Utc::now);
                newly
            };
            if newly {
                tracing::warn!(agent = %a.name, namespace = %a.namespace, "agent unreachable");
                self.trigger_pod(&a.namespace, &a.name, Some(&a.pool), false);
            }
            drop(a);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
        }
    }
}
