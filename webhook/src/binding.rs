//! The JSON patch that binds a sandbox at admission.
//!
//! A bound sandbox carries `spec.agentRef`, the agent and pool labels, the
//! cleanup finalizer, the bind time and the reservation token. An unbound one
//! (no free slot) gets only the pool label, so `kubectl get sbx -l` works for
//! it too; the controller binds it later.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use fast_sandbox_api::{SandboxNetwork, SandboxResources, wellknown};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use fast_sandbox_placement::Choice;

/// What admission decided for a new sandbox.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    /// Name of the pool (`spec.poolRef`).
    pub pool: String,
    /// The agent, or `None` when the pool had no free slot.
    pub choice: Option<Choice>,
    /// When the decision was made.
    pub bound_at: DateTime<Utc>,
    /// The reservation token the placement index holds the slot under.
    pub reservation: String,
    /// Limits to write into `spec.resources` (the pool's defaults or the
    /// operator's maximum filled in), or `None` to leave them as sent.
    pub resources: Option<SandboxResources>,
    /// Network to write into `spec.network` (the pool's `defaultNetwork`
    /// for a sandbox that sets none), or `None` to leave it as sent.
    pub network: Option<SandboxNetwork>,
    /// Admission makes this binding as the sandbox is created (written as
    /// `spec.agentRef.atAdmission`); false for the controller's.
    pub at_admission: bool,
}

/// The bind time as written in [`wellknown::ANNOTATION_BOUND_AT`]: RFC 3339
/// in UTC with milliseconds.
pub fn format_bound_at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The JSON patch applying `binding` to an object with metadata `meta`.
/// Maps and lists that do not exist yet are added whole, since a JSON patch
/// cannot add a key under a missing parent.
pub fn patch(meta: &ObjectMeta, binding: &Binding) -> Patch {
    let mut ops = Vec::new();
    let mut labels = BTreeMap::new();
    labels.insert(wellknown::LABEL_POOL, binding.pool.clone());
    let mut annotations = BTreeMap::new();
    if let Some(r) = &binding.resources {
        // `add` replaces a member that exists.
        ops.push(add(&["spec", "resources"], json!(r)));
    }
    if let Some(n) = &binding.network {
        ops.push(add(&["spec", "network"], json!(n)));
    }

    if let Some(choice) = &binding.choice {
        let mut agent_ref = json!({"podName": choice.pod_name, "nodeName": choice.node_name});
        if binding.at_admission {
            agent_ref["atAdmission"] = json!(true);
        }
        ops.push(add(&["spec", "agentRef"], agent_ref));
        labels.insert(wellknown::LABEL_AGENT, choice.pod_name.clone());
        annotations.insert(
            wellknown::ANNOTATION_BOUND_AT,
            format_bound_at(binding.bound_at),
        );
        annotations.insert(
            wellknown::ANNOTATION_RESERVATION,
            binding.reservation.clone(),
        );
        match &meta.finalizers {
            None => ops.push(add(
                &["metadata", "finalizers"],
                json!([wellknown::FINALIZER]),
            )),
            Some(f) if !f.iter().any(|f| f == wellknown::FINALIZER) => ops.push(add(
                &["metadata", "finalizers", "-"],
                json!(wellknown::FINALIZER),
            )),
            Some(_) => {}
        }
    }
    merge_map(&mut ops, "labels", meta.labels.as_ref(), labels);
    merge_map(
        &mut ops,
        "annotations",
        meta.annotations.as_ref(),
        annotations,
    );
    Patch(ops)
}

fn merge_map(
    ops: &mut Vec<PatchOperation>,
    field: &str,
    existing: Option<&BTreeMap<String, String>>,
    wanted: BTreeMap<&str, String>,
) {
    if wanted.is_empty() {
        return;
    }
    match existing {
        None => ops.push(add(&["metadata", field], json!(wanted))),
        Some(have) => {
            for (k, v) in wanted {
                if have.get(k) != Some(&v) {
                    ops.push(add(&["metadata", field, k], Value::String(v)));
                }
            }
        }
    }
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn binding(choice: bool) -> Binding {
        Binding {
            pool: "default-pool".into(),
            choice: choice.then(|| Choice {
                pod_name: "agent-1".into(),
                node_name: "node-a".into(),
                image_hit: true,
            }),
            resources: None,
            network: None,
            at_admission: true,
            bound_at: Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap()
                + chrono::Duration::milliseconds(67),
            reservation: "req-uid".into(),
        }
    }

    fn apply(object: Value, p: &Patch) -> Value {
        let mut doc = object;
        json_patch::patch(&mut doc, p).expect("patch applies");
        doc
    }

    #[test]
    fn bound_at_has_milliseconds() {
        assert_eq!(
            format_bound_at(binding(true).bound_at),
            "2025-01-02T03:04:05.067Z"
        );
    }

    #[test]
    fn binds_an_object_with_bare_metadata() {
        let obj = json!({"metadata": {"name": "s"}, "spec": {"image": "busybox", "poolRef": "default-pool"}});
        let p = patch(&ObjectMeta::default(), &binding(true));
        let out = apply(obj, &p);
        assert_eq!(
            out,
            json!({
                "metadata": {
                    "name": "s",
                    "labels": {"sandbox.fast.io/pool": "default-pool", "sandbox.fast.io/agent": "agent-1"},
                    "annotations": {
                        "sandbox.fast.io/bound-at": "2025-01-02T03:04:05.067Z",
                        "sandbox.fast.io/reservation": "req-uid"
                    },
                    "finalizers": ["sandbox.fast.io/cleanup"]
                },
                "spec": {
                    "image": "busybox",
                    "poolRef": "default-pool",
                    "agentRef": {"podName": "agent-1", "nodeName": "node-a", "atAdmission": true}
                }
            })
        );
    }

    #[test]
    fn a_binding_made_after_admission_is_not_marked_as_one() {
        let b = Binding {
            at_admission: false,
            ..binding(true)
        };
        let out = apply(
            json!({"metadata": {}, "spec": {}}),
            &patch(&ObjectMeta::default(), &b),
        );
        assert_eq!(
            out["spec"]["agentRef"],
            json!({"podName": "agent-1", "nodeName": "node-a"})
        );
    }

    #[test]
    fn merges_into_existing_maps_and_lists() {
        let meta = ObjectMeta {
            labels: Some([("app".to_string(), "x".to_string())].into()),
            annotations: Some([("note".to_string(), "y".to_string())].into()),
            finalizers: Some(vec!["other/finalizer".into()]),
            ..Default::default()
        };
        let obj = json!({
            "metadata": {"labels": {"app": "x"}, "annotations": {"note": "y"}, "finalizers": ["other/finalizer"]},
            "spec": {}
        });
        let out = apply(obj, &patch(&meta, &binding(true)));
        assert_eq!(out["metadata"]["labels"]["app"], "x");
        assert_eq!(
            out["metadata"]["labels"]["sandbox.fast.io/agent"],
            "agent-1"
        );
        assert_eq!(out["metadata"]["annotations"]["note"], "y");
        assert_eq!(
            out["metadata"]["finalizers"],
            json!(["other/finalizer", "sandbox.fast.io/cleanup"])
        );
        // The label key's '/' is escaped in the pointer.
        let text = serde_json::to_string(&patch(&meta, &binding(true))).unwrap();
        assert!(
            text.contains("/metadata/labels/sandbox.fast.io~1agent"),
            "{text}"
        );
    }

    #[test]
    fn finalizer_is_not_added_twice() {
        let meta = ObjectMeta {
            finalizers: Some(vec![wellknown::FINALIZER.into()]),
            ..Default::default()
        };
        let p = patch(&meta, &binding(true));
        assert!(!serde_json::to_string(&p).unwrap().contains("finalizers"));
    }

    #[test]
    fn unbound_gets_only_the_pool_label() {
        let p = patch(&ObjectMeta::default(), &binding(false));
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!([{"op": "add", "path": "/metadata/labels", "value": {"sandbox.fast.io/pool": "default-pool"}}])
        );
    }
}
