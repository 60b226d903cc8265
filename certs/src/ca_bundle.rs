//! Puts the CA into the `caBundle` of what the apiserver calls with TLS:
//! every webhook of our Mutating and Validating webhook configurations and
//! the access server's APIService, so the apiserver trusts their serving
//! certificates.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch as JsonPatch, PatchOperation, TestOperation};
use k8s_openapi::ByteString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;

/// Name of the MutatingWebhookConfiguration deploy/webhook creates.
pub const WEBHOOK_CONFIGURATION: &str = "fast-sandbox-webhook";
/// Name of the ValidatingWebhookConfiguration deploy/webhook creates.
pub const POLICY_CONFIGURATION: &str = "fast-sandbox-policy";
/// Name of the APIService deploy/gateway creates.
pub const API_SERVICE: &str = "v1alpha1.subresources.sandbox.fast.io";

/// An object whose `caBundle` the CA goes into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A MutatingWebhookConfiguration: every webhook's `clientConfig`.
    Mutating(String),
    /// A ValidatingWebhookConfiguration: every webhook's `clientConfig`.
    Validating(String),
    /// An APIService: `spec.caBundle`.
    ApiService(String),
}

impl Target {
    /// The object's name.
    pub fn name(&self) -> &str {
        match self {
            Target::Mutating(n) | Target::Validating(n) | Target::ApiService(n) => n,
        }
    }

    fn resource(&self) -> ApiResource {
        let gvk = match self {
            Target::Mutating(_) => GroupVersionKind::gvk(
                "admissionregistration.k8s.io",
                "v1",
                "MutatingWebhookConfiguration",
            ),
            Target::Validating(_) => GroupVersionKind::gvk(
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingWebhookConfiguration",
            ),
            Target::ApiService(_) => {
                GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService")
            }
        };
        ApiResource::from_gvk(&gvk)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Target::Mutating(_) => "MutatingWebhookConfiguration",
            Target::Validating(_) => "ValidatingWebhookConfiguration",
            Target::ApiService(_) => "APIService",
        };
        write!(f, "{kind} {}", self.name())
    }
}

/// The JSON patch setting `caBundle` where it differs in `object` (of
/// `target`'s kind), or `None` when everything already carries `ca_pem`.
/// Each webhook's change is guarded by a `test` of its name, so a
/// concurrent reorder fails the patch instead of writing the wrong entry.
pub fn ca_bundle_patch(target: &Target, object: &Value, ca_pem: &str) -> Option<JsonPatch> {
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    // ByteString serialises as base64, as the API wants `[]byte`.
    let encoded = serde_json::to_value(&bundle).unwrap_or_default();
    let mut ops = Vec::new();
    match target {
        Target::Mutating(_) | Target::Validating(_) => {
            let webhooks = object["webhooks"].as_array().cloned().unwrap_or_default();
            for (i, webhook) in webhooks.iter().enumerate() {
                if webhook["clientConfig"]["caBundle"] == encoded {
                    continue;
                }
                let index = i.to_string();
                ops.push(PatchOperation::Test(TestOperation {
                    path: PointerBuf::from_tokens(["webhooks", index.as_str(), "name"]),
                    value: webhook["name"].clone(),
                }));
                ops.push(PatchOperation::Add(AddOperation {
                    path: PointerBuf::from_tokens([
                        "webhooks",
                        index.as_str(),
                        "clientConfig",
                        "caBundle",
                    ]),
                    value: encoded.clone(),
                }));
            }
        }
        Target::ApiService(_) => {
            if object["spec"]["caBundle"] != encoded {
                ops.push(PatchOperation::Add(AddOperation {
                    path: PointerBuf::from_tokens(["spec", "caBundle"]),
                    value: encoded,
                }));
            }
        }
    }
    (!ops.is_empty()).then_some(JsonPatch(ops))
}

/// Writes `ca_pem` into `target`. Returns how many bundles changed;
/// `Ok(None)` if the object does not exist.
pub async fn inject(
    client: Client,
    target: &Target,
    ca_pem: &str,
) -> Result<Option<usize>, kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client, &target.resource());
    let Some(object) = api.get_opt(target.name()).await? else {
        return Ok(None);
    };
    let object = serde_json::to_value(&object).map_err(kube::Error::SerdeError)?;
    let Some(patch) = ca_bundle_patch(target, &object, ca_pem) else {
        return Ok(Some(0));
    };
    let changed = patch
        .0
        .iter()
        .filter(|op| matches!(op, PatchOperation::Add(_)))
        .count();
    api.patch(
        target.name(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await?;
    Ok(Some(changed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(bundles: &[Option<&str>]) -> Value {
        json!({
            "webhooks": bundles.iter().enumerate().map(|(i, b)| json!({
                "name": format!("w{i}.sandbox.fast.io"),
                "clientConfig": match b {
                    Some(b) => json!({"caBundle": serde_json::to_value(ByteString(b.as_bytes().to_vec())).unwrap()}),
                    None => json!({}),
                },
            })).collect::<Vec<_>>()
        })
    }

    #[test]
    fn patches_every_stale_webhook_with_base64() {
        let cfg = config(&[None, Some("CA"), Some("old")]);
        for target in [Target::Mutating("m".into()), Target::Validating("v".into())] {
            let patch = ca_bundle_patch(&target, &cfg, "CA").unwrap();
            assert_eq!(
                serde_json::to_value(&patch).unwrap(),
                json!([
                    {"op": "test", "path": "/webhooks/0/name", "value": "w0.sandbox.fast.io"},
                    {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0E="},
                    {"op": "test", "path": "/webhooks/2/name", "value": "w2.sandbox.fast.io"},
                    {"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": "Q0E="}
                ])
            );
            let mut doc = cfg.clone();
            json_patch::patch(&mut doc, &patch).unwrap();
            assert_eq!(ca_bundle_patch(&target, &doc, "CA"), None);
        }
    }

    #[test]
    fn the_api_service_gets_its_bundle() {
        let target = Target::ApiService(API_SERVICE.into());
        let mut svc = json!({"spec": {"group": "subresources.sandbox.fast.io"}});
        let patch = ca_bundle_patch(&target, &svc, "CA").unwrap();
        json_patch::patch(&mut svc, &patch).unwrap();
        assert_eq!(svc["spec"]["caBundle"], "Q0E=");
        assert_eq!(ca_bundle_patch(&target, &svc, "CA"), None);
        assert_eq!(
            target.to_string(),
            "APIService v1alpha1.subresources.sandbox.fast.io"
        );
    }
}
