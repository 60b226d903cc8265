//! A pool's `agentTemplate` against the policy: what a pool may choose of
//! its agent pods, the admission check that refuses the rest by field, and
//! the filtered request the controller copies into agent pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, PodTemplateSpec, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use serde_json::Value;

use super::{DEFAULT_AGENT_IMAGE, Policy};
use crate::validation::FieldErrors;

/// Label and annotation domains a pool may not set on agent pods: ours,
/// Kubernetes' own (a tenant label `app.kubernetes.io/name` could make an
/// agent an endpoint of an operator Service) and CNI attachment.
pub const RESERVED_DOMAINS: &[&str] =
    &["sandbox.fast.io", "kubernetes.io", "k8s.io", "cni.cncf.io"];

/// Fields of `agentTemplate.spec` a pool may set.
pub const ALLOWED_POD_FIELDS: &[&str] = &[
    "containers",
    "nodeSelector",
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "priorityClassName",
];
/// Fields of the agent container a pool may set.
pub const ALLOWED_CONTAINER_FIELDS: &[&str] = &["name", "image", "imagePullPolicy", "resources"];
/// Fields of `agentTemplate.metadata` a pool may set.
pub const ALLOWED_METADATA_FIELDS: &[&str] = &["labels", "annotations"];
/// The one container of an agent pod.
pub const AGENT_CONTAINER: &str = "agent";

/// Whether a label or annotation key lies in a reserved domain.
pub fn is_reserved_key(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return false;
    };
    let prefix = prefix.to_ascii_lowercase();
    RESERVED_DOMAINS
        .iter()
        .any(|d| prefix == *d || prefix.ends_with(&format!(".{d}")))
}

fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn refuse_other_fields(errs: &mut FieldErrors, at: &str, obj: &Value, allowed: &[&str], why: &str) {
    if let Value::Object(m) = obj {
        for (k, v) in m {
            if !allowed.contains(&k.as_str()) && !is_unset(v) {
                errs.0.push(crate::validation::FieldError {
                    field: format!("{at}.{k}"),
                    message: why.to_string(),
                });
            }
        }
    }
}

const NOT_CHOSEN_BY_POOLS: &str = "may not be set: agent pods are built by the operator; a pool may choose only scheduling (nodeSelector, affinity, tolerations, topologySpreadConstraints, priorityClassName), the agent container's resources and image (from the operator's list), and labels and annotations";

/// Checks a pool's `agentTemplate` as sent (JSON, so fields our types do
/// not know are seen too) against `policy`. Every refusal names its field.
pub fn check_agent_template(template: &Value, policy: &Policy) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    let at = "spec.agentTemplate";
    if is_unset(template) {
        return Ok(());
    }
    if !template.is_object() {
        errs.0.push(crate::validation::FieldError {
            field: at.into(),
            message: "must be an object".into(),
        });
        return Err(errs);
    }
    refuse_other_fields(
        &mut errs,
        at,
        template,
        &["metadata", "spec"],
        NOT_CHOSEN_BY_POOLS,
    );
    let meta = &template["metadata"];
    refuse_other_fields(
        &mut errs,
        &format!("{at}.metadata"),
        meta,
        ALLOWED_METADATA_FIELDS,
        NOT_CHOSEN_BY_POOLS,
    );
    for map in ["labels", "annotations"] {
        if let Value::Object(m) = &meta[map] {
            for k in m.keys() {
                if is_reserved_key(k) {
                    errs.0.push(crate::validation::FieldError {
                        field: format!("{at}.metadata.{map}[{k}]"),
                        message: format!(
                            "keys in the domains {} are reserved for the operator",
                            RESERVED_DOMAINS.join(", ")
                        ),
                    });
                }
            }
        }
    }
    let spec = &template["spec"];
    let sat = format!("{at}.spec");
    refuse_other_fields(
        &mut errs,
        &sat,
        spec,
        ALLOWED_POD_FIELDS,
        NOT_CHOSEN_BY_POOLS,
    );
    if let Some(pc) = spec["priorityClassName"].as_str()
        && !pc.is_empty()
        && !policy.allows_priority_class(pc)
    {
        errs.0.push(crate::validation::FieldError {
            field: format!("{sat}.priorityClassName"),
            message: format!("PriorityClass {pc:?} is not allowed for agent pods by the operator"),
        });
    }
    if let Value::Array(containers) = &spec["containers"] {
        for (i, c) in containers.iter().enumerate() {
            let cat = format!("{sat}.containers[{i}]");
            if i > 0 {
                errs.0.push(crate::validation::FieldError {
                    field: cat,
                    message: format!(
                        "an agent pod has exactly one container, {AGENT_CONTAINER:?}; extra containers may not be added"
                    ),
                });
                continue;
            }
            refuse_other_fields(
                &mut errs,
                &cat,
                c,
                ALLOWED_CONTAINER_FIELDS,
                NOT_CHOSEN_BY_POOLS,
            );
            if let Some(name) = c["name"].as_str()
                && !name.is_empty()
                && name != AGENT_CONTAINER
            {
                errs.0.push(crate::validation::FieldError {
                    field: format!("{cat}.name"),
                    message: format!("must be {AGENT_CONTAINER:?}"),
                });
            }
            if let Some(img) = c["image"].as_str()
                && !img.is_empty()
                && !policy.allows_image(img)
            {
                let allowed = if policy.agent_images.is_empty() {
                    DEFAULT_AGENT_IMAGE.to_string()
                } else {
                    policy.agent_images.join(", ")
                };
                errs.0.push(crate::validation::FieldError {
                    field: format!("{cat}.image"),
                    message: format!(
                        "{img:?} is not an agent image the operator allows (allowed: {allowed})"
                    ),
                });
            }
        }
    }
    if errs.0.is_empty() { Ok(()) } else { Err(errs) }
}

/// The part of an agent pod a pool chose, as the controller copies it: only
/// what [`check_agent_template`] allows, whatever the template holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentRequest {
    /// Pod labels (reserved domains dropped).
    pub labels: BTreeMap<String, String>,
    /// Pod annotations (reserved domains dropped).
    pub annotations: BTreeMap<String, String>,
    /// Node selector.
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Affinity.
    pub affinity: Option<Affinity>,
    /// Tolerations.
    pub tolerations: Option<Vec<Toleration>>,
    /// Topology spread constraints.
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// PriorityClass, if the operator allows it.
    pub priority_class_name: Option<String>,
    /// The agent container's resources.
    pub resources: Option<ResourceRequirements>,
    /// The agent image: the one asked for if allowed, else the default.
    pub image: String,
    /// Image pull policy.
    pub image_pull_policy: Option<String>,
}

impl AgentRequest {
    /// What `template` asks for, filtered by `policy`.
    pub fn from_template(template: Option<&PodTemplateSpec>, policy: &Policy) -> Self {
        let keep = |m: Option<&BTreeMap<String, String>>| -> BTreeMap<String, String> {
            m.map(|m| {
                m.iter()
                    .filter(|(k, _)| !is_reserved_key(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
        };
        let meta = template.and_then(|t| t.metadata.as_ref());
        let spec = template.and_then(|t| t.spec.as_ref());
        let container = spec.and_then(|s| s.containers.first());
        let image = container
            .and_then(|c| c.image.as_deref())
            .filter(|i| policy.allows_image(i))
            .unwrap_or_else(|| policy.default_agent_image())
            .to_string();
        AgentRequest {
            labels: keep(meta.and_then(|m| m.labels.as_ref())),
            annotations: keep(meta.and_then(|m| m.annotations.as_ref())),
            node_selector: spec.and_then(|s| s.node_selector.clone()),
            affinity: spec.and_then(|s| s.affinity.clone()),
            tolerations: spec.and_then(|s| s.tolerations.clone()),
            topology_spread_constraints: spec.and_then(|s| s.topology_spread_constraints.clone()),
            priority_class_name: spec
                .and_then(|s| s.priority_class_name.clone())
                .filter(|p| policy.allows_priority_class(p)),
            resources: container.and_then(|c| c.resources.clone()),
            image,
            image_pull_policy: container.and_then(|c| c.image_pull_policy.clone()),
        }
    }
}
