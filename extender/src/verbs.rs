//! The two verbs, request bytes in, answer bytes out: `filter` drops nodes
//! that cannot host an agent pod (saying why), `prioritize` scores nodes by
//! the pool's images and the spread of its agents. Any other pod gets its
//! nodes back untouched and neutral scores.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::agent_pod::AgentPod;
use crate::index::{Index, Unfit};
use crate::metrics::{FilterReason, Metrics, Outcome, PodKind, Verb};
use crate::protocol::{
    Candidates, EmptyObject, ExtenderArgs, ExtenderFilterResult, HostPriority, NamesOut,
    NodeListOut, NodesOut,
};

/// Why a request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum VerbError {
    /// The body is not an `ExtenderArgs` document.
    #[error("request is not valid ExtenderArgs JSON: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Answers kube-scheduler's calls from the index.
#[derive(Clone, Debug)]
pub struct Extender {
    index: Arc<Index>,
    metrics: Option<Metrics>,
}

impl Extender {
    /// An extender answering from `index`, recording into `metrics` if any.
    pub fn new(index: Arc<Index>, metrics: Option<Metrics>) -> Self {
        Self { index, metrics }
    }

    /// The index answers come from.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// Answers a `filter` call: an `ExtenderFilterResult` as JSON.
    pub fn filter(&self, body: &[u8]) -> Result<Vec<u8>, VerbError> {
        let start = Instant::now();
        let answer = self.filter_inner(body);
        self.observe(Verb::Filter, start, &answer);
        answer.map(|(bytes, _)| bytes)
    }

    /// Answers a `prioritize` call: a `HostPriorityList` as JSON.
    pub fn prioritize(&self, body: &[u8], now: DateTime<Utc>) -> Result<Vec<u8>, VerbError> {
        let start = Instant::now();
        let answer = self.prioritize_inner(body, now);
        self.observe(Verb::Prioritize, start, &answer);
        answer.map(|(bytes, _)| bytes)
    }

    fn observe(&self, verb: Verb, start: Instant, answer: &Result<(Vec<u8>, PodKind), VerbError>) {
        let Some(m) = &self.metrics else { return };
        let (kind, outcome) = match answer {
            Ok((_, kind)) => (*kind, Outcome::Ok),
            Err(_) => (PodKind::Unknown, Outcome::BadRequest),
        };
        m.observe(verb, kind, outcome, start.elapsed().as_secs_f64());
    }

    fn filter_inner(&self, body: &[u8]) -> Result<(Vec<u8>, PodKind), VerbError> {
        let args: ExtenderArgs<'_> = serde_json::from_slice(body)?;
        let agent = args.pod.as_ref().and_then(AgentPod::recognise);
        let Some(agent) = agent else {
            // Not ours: hand back exactly what was sent.
            let result = ExtenderFilterResult {
                nodes: args.nodes.map(NodesOut::Echo),
                node_names: args.node_names.map(NamesOut::Echo),
                ..Default::default()
            };
            return Ok((serde_json::to_vec(&result)?, PodKind::Other));
        };
        let candidates = Candidates::decode(&args)?;
        let names = candidates.names();
        let verdicts = self.index.filter(&agent, &names);
        let mut unresolvable = BTreeMap::new();
        let mut keep = Vec::with_capacity(names.len());
        for (i, verdict) in verdicts.into_iter().enumerate() {
            match verdict {
                None => keep.push(i),
                Some(unfit) => {
                    if let Some(m) = &self.metrics {
                        m.filtered(match unfit {
                            Unfit::NotReady => FilterReason::NotReady,
                            Unfit::Unschedulable => FilterReason::Unschedulable,
                            Unfit::ImageMissing(_) => FilterReason::ImageMissing,
                        });
                    }
                    unresolvable.insert(names[i].to_string(), unfit.to_string());
                }
            }
        }
        if !unresolvable.is_empty() {
            tracing::debug!(
                pod = ?args.pod.as_ref().map(|p| &p.metadata.name),
                pool = %agent.pool,
                filtered = unresolvable.len(),
                kept = keep.len(),
                "filtered nodes for agent pod"
            );
        }
        let mut result = ExtenderFilterResult {
            failed_and_unresolvable_nodes: unresolvable,
            ..Default::default()
        };
        match &candidates {
            Candidates::Names(_) => {
                result.node_names = Some(NamesOut::Kept(keep.iter().map(|i| names[*i]).collect()))
            }
            Candidates::Objects(objects) => {
                result.nodes = Some(NodesOut::Kept(NodeListOut {
                    metadata: EmptyObject {},
                    items: keep.iter().map(|i| objects[*i].1).collect(),
                }))
            }
        }
        Ok((serde_json::to_vec(&result)?, PodKind::Agent))
    }

    fn prioritize_inner(
        &self,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(Vec<u8>, PodKind), VerbError> {
        let args: ExtenderArgs<'_> = serde_json::from_slice(body)?;
        let candidates = Candidates::decode(&args)?;
        let names = candidates.names();
        let agent = args.pod.as_ref().and_then(AgentPod::recognise);
        let (scores, kind) = match &agent {
            Some(agent) => (self.index.prioritize(agent, &names, now), PodKind::Agent),
            None => (vec![0; names.len()], PodKind::Other),
        };
        let list: Vec<HostPriority<'_>> = names
            .iter()
            .zip(scores)
            .map(|(host, score)| HostPriority {
                host: (*host).into(),
                score,
            })
            .collect();
        Ok((serde_json::to_vec(&list)?, kind))
    }
}
