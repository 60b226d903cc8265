//! Puts the CA into the `caBundle` of every webhook of a
//! MutatingWebhookConfiguration, so the apiserver trusts the webhook's
//! serving certificate.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch as JsonPatch, PatchOperation, TestOperation};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

/// Name of the webhook configuration deploy/webhook creates.
pub const WEBHOOK_CONFIGURATION: &str = "fast-sandbox-webhook";

/// The JSON patch setting `caBundle` on every webhook whose bundle differs,
/// or `None` when all already carry `ca_pem`. Each change is guarded by a
/// `test` of the webhook's name, so a concurrent reorder fails the patch
/// instead of writing the wrong entry.
pub fn ca_bundle_patch(config: &MutatingWebhookConfiguration, ca_pem: &str) -> Option<JsonPatch> {
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let mut ops = Vec::new();
    for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
        if webhook.client_config.ca_bundle.as_ref() == Some(&bundle) {
            continue;
        }
        let index = i.to_string();
        ops.push(PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["webhooks", index.as_str(), "name"]),
            value: serde_json::Value::String(webhook.name.clone()),
        }));
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["webhooks", index.as_str(), "clientConfig", "caBundle"]),
            // ByteString serialises as base64, as the API wants `[]byte`.
            value: serde_json::to_value(&bundle).unwrap_or_default(),
        }));
    }
    (!ops.is_empty()).then_some(JsonPatch(ops))
}

/// Writes `ca_pem` into configuration `name`. Returns how many webhooks
/// changed; `Ok(None)` if the configuration does not exist.
pub async fn inject(
    client: Client,
    name: &str,
    ca_pem: &str,
) -> Result<Option<usize>, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let Some(config) = api.get_opt(name).await? else {
        return Ok(None);
    };
    let Some(patch) = ca_bundle_patch(&config, ca_pem) else {
        return Ok(Some(0));
    };
    let changed = patch.0.len() / 2;
    api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await?;
    Ok(Some(changed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};
    use serde_json::json;

    fn config(bundles: &[Option<&str>]) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            webhooks: Some(
                bundles
                    .iter()
                    .enumerate()
                    .map(|(i, b)| MutatingWebhook {
                        name: format!("w{i}.sandbox.fast.io"),
                        client_config: WebhookClientConfig {
                            ca_bundle: b.map(|b| ByteString(b.as_bytes().to_vec())),
                            ..Default::default()
                        },
                        admission_review_versions: vec!["v1".into()],
                        side_effects: "NoneOnDryRun".into(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn patches_every_stale_webhook_with_base64() {
        let cfg = config(&[None, Some("CA"), Some("old")]);
        let patch = ca_bundle_patch(&cfg, "CA").unwrap();
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([
                {"op": "test", "path": "/webhooks/0/name", "value": "w0.sandbox.fast.io"},
                {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0E="},
                {"op": "test", "path": "/webhooks/2/name", "value": "w2.sandbox.fast.io"},
                {"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": "Q0E="}
            ])
        );
        let mut doc = serde_json::to_value(&cfg).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        let patched: MutatingWebhookConfiguration = serde_json::from_value(doc).unwrap();
        assert_eq!(ca_bundle_patch(&patched, "CA"), None);
    }
}
