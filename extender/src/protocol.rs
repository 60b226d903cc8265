//! The kube-scheduler extender wire format (`k8s.io/kube-scheduler/extender/v1`),
//! as kube-scheduler encodes it: Go field names as JSON keys.
//!
//! The node part of a request is kept as raw JSON so that a pod the extender
//! does not care about is answered by echoing those bytes, without decoding
//! or re-encoding thousands of node objects.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Highest score an extender may give (`MaxExtenderPriority`); the scheduler
/// multiplies it by the extender's weight and by 10.
pub const MAX_EXTENDER_PRIORITY: i64 = 10;
/// Lowest score an extender may give (`MinExtenderPriority`).
pub const MIN_EXTENDER_PRIORITY: i64 = 0;

/// `ExtenderArgs`: the pod being scheduled and its candidate nodes, as full
/// `v1.NodeList` (`nodeCacheCapable: false`) or as names
/// (`nodeCacheCapable: true`).
#[derive(Deserialize, Debug)]
pub struct ExtenderArgs<'a> {
    /// `Pod`: the pod being scheduled.
    #[serde(rename = "Pod", default)]
    pub pod: Option<PodView>,
    /// `Nodes`: a `v1.NodeList`, left undecoded.
    #[serde(rename = "Nodes", borrow, default)]
    pub nodes: Option<&'a RawValue>,
    /// `NodeNames`: a JSON array of names, left undecoded.
    #[serde(rename = "NodeNames", borrow, default)]
    pub node_names: Option<&'a RawValue>,
}

/// The candidate nodes of a request in whichever form it came.
#[derive(Debug)]
pub enum Candidates<'a> {
    /// `NodeNames` (node cache capable).
    Names(Vec<Cow<'a, str>>),
    /// `Nodes.items`, each item raw, with its name.
    Objects(Vec<(Cow<'a, str>, &'a RawValue)>),
}

impl<'a> Candidates<'a> {
    /// Decodes the candidates of `args`: node names, or each node's
    /// `metadata.name` next to its untouched JSON.
    pub fn decode(args: &ExtenderArgs<'a>) -> Result<Self, serde_json::Error> {
        if let Some(raw) = args.node_names {
            return Ok(Candidates::Names(serde_json::from_str(raw.get())?));
        }
        match args.nodes {
            Some(raw) => {
                let list: RawNodeList<'a> = serde_json::from_str(raw.get())?;
                let mut out = Vec::with_capacity(list.items.len());
                for item in list.items {
                    let named: NamedObject<'a> = serde_json::from_str(item.get())?;
                    out.push((named.metadata.name, item));
                }
                Ok(Candidates::Objects(out))
            }
            None => Ok(Candidates::Names(Vec::new())),
        }
    }

    /// The node names, in request order.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Candidates::Names(n) => n.iter().map(|n| n.as_ref()).collect(),
            Candidates::Objects(o) => o.iter().map(|(n, _)| n.as_ref()).collect(),
        }
    }

    /// How many nodes were offered.
    pub fn len(&self) -> usize {
        match self {
            Candidates::Names(n) => n.len(),
            Candidates::Objects(o) => o.len(),
        }
    }

    /// Whether no node was offered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Deserialize)]
struct RawNodeList<'a> {
    #[serde(borrow, default)]
    items: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct NamedObject<'a> {
    #[serde(borrow)]
    metadata: NameOnly<'a>,
}

#[derive(Deserialize)]
struct NameOnly<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// What the extender reads of the pod being scheduled; every other field of
/// the `v1.Pod` is skipped while parsing.
#[derive(Deserialize, Debug, Default, Clone)]
pub struct PodView {
    /// Object metadata.
    #[serde(default)]
    pub metadata: PodMeta,
    /// Pod spec.
    #[serde(default)]
    pub spec: PodSpecView,
}

/// The part of the pod's metadata the extender uses.
#[derive(Deserialize, Debug, Default, Clone)]
pub struct PodMeta {
    /// Pod name.
    #[serde(default)]
    pub name: String,
    /// Pod namespace.
    #[serde(default)]
    pub namespace: String,
    /// Pod labels.
    #[serde(default)]
    pub labels: HashMap<String, String>,
}

/// The part of the pod's spec the extender uses.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecView {
    /// Containers.
    #[serde(default)]
    pub containers: Vec<ContainerView>,
    /// Init containers.
    #[serde(default)]
    pub init_containers: Vec<ContainerView>,
}

/// The part of a container the extender uses.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView {
    /// Image reference.
    #[serde(default)]
    pub image: Option<String>,
    /// `Always`, `IfNotPresent` or `Never`.
    #[serde(default)]
    pub image_pull_policy: Option<String>,
}

/// `ExtenderFilterResult`.
#[derive(Serialize, Debug, Default)]
pub struct ExtenderFilterResult<'a> {
    /// `Nodes`: the kept nodes when the request carried node objects.
    #[serde(rename = "Nodes")]
    pub nodes: Option<NodesOut<'a>>,
    /// `NodeNames`: the kept nodes when the request carried names.
    #[serde(rename = "NodeNames")]
    pub node_names: Option<NamesOut<'a>>,
    /// `FailedNodes`: node → why the pod cannot go there (preemption might help).
    #[serde(rename = "FailedNodes")]
    pub failed_nodes: BTreeMap<String, String>,
    /// `FailedAndUnresolvableNodes`: node → why; preemption would not help.
    #[serde(rename = "FailedAndUnresolvableNodes")]
    pub failed_and_unresolvable_nodes: BTreeMap<String, String>,
    /// `Error`: non-empty fails the scheduling attempt.
    #[serde(rename = "Error")]
    pub error: String,
}

/// The `Nodes` answer: the request's list as sent, or the kept items.
#[derive(Serialize, Debug)]
#[serde(untagged)]
pub enum NodesOut<'a> {
    /// The request's `Nodes` bytes, echoed.
    Echo(&'a RawValue),
    /// The kept items of the request's list.
    Kept(NodeListOut<'a>),
}

/// A `v1.NodeList` made of the request's own item bytes.
#[derive(Serialize, Debug)]
pub struct NodeListOut<'a> {
    /// List metadata (empty, as the scheduler sends it).
    pub metadata: EmptyObject,
    /// The kept items, byte for byte as sent.
    pub items: Vec<&'a RawValue>,
}

/// `{}`.
#[derive(Serialize, Debug, Default)]
pub struct EmptyObject {}

/// The `NodeNames` answer: the request's array as sent, or the kept names.
#[derive(Serialize, Debug)]
#[serde(untagged)]
pub enum NamesOut<'a> {
    /// The request's `NodeNames` bytes, echoed.
    Echo(&'a RawValue),
    /// The kept names.
    Kept(Vec<&'a str>),
}

/// `HostPriority`: one node's score, 0..=10.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HostPriority<'a> {
    /// `Host`: node name.
    #[serde(rename = "Host", borrow)]
    pub host: Cow<'a, str>,
    /// `Score`: 0..=[`MAX_EXTENDER_PRIORITY`].
    #[serde(rename = "Score")]
    pub score: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_form_decodes_and_missing_fields_are_none() {
        let body = r#"{"Pod":{"metadata":{"name":"p","namespace":"ns"}},"Nodes":null,"NodeNames":["a","b"]}"#;
        let args: ExtenderArgs<'_> = serde_json::from_str(body).unwrap();
        assert!(args.nodes.is_none());
        let c = Candidates::decode(&args).unwrap();
        assert_eq!(c.names(), vec!["a", "b"]);
        assert_eq!(args.pod.unwrap().metadata.namespace, "ns");
    }

    #[test]
    fn objects_form_keeps_item_bytes() {
        let body = r#"{"Pod":{},"Nodes":{"metadata":{},"items":[{"metadata":{"name":"n1"},"status":{"images":[]}}]},"NodeNames":null}"#;
        let args: ExtenderArgs<'_> = serde_json::from_str(body).unwrap();
        match Candidates::decode(&args).unwrap() {
            Candidates::Objects(o) => {
                assert_eq!(o[0].0, "n1");
                assert_eq!(
                    o[0].1.get(),
                    r#"{"metadata":{"name":"n1"},"status":{"images":[]}}"#
                );
            }
            other => panic!("expected objects, got {other:?}"),
        }
    }

    #[test]
    fn filter_result_uses_go_field_names() {
        let r = ExtenderFilterResult {
            node_names: Some(NamesOut::Kept(vec!["a"])),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"Nodes":null,"NodeNames":["a"],"FailedNodes":{},"FailedAndUnresolvableNodes":{},"Error":""}"#
        );
    }
}
