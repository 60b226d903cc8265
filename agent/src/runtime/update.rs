//! Updating a container record in place: how a pre-started sandbox becomes
//! a sandbox (its labels name the sandbox, its spec becomes the cold spec
//! its process now follows) in one call, the claim's commit point.

use std::collections::HashMap;

use containerd_client::services::v1::{Container, UpdateContainerRequest};

use super::{Containerd, SPEC_TYPE_URL};
use crate::error::{Error, Result};

impl Containerd {
    /// Sets `labels` (each named in the field mask, others kept) and
    /// replaces the spec of container `id` with `spec_json`.
    pub async fn relabel_container(
        &self,
        id: &str,
        labels: HashMap<String, String>,
        spec_json: Vec<u8>,
    ) -> Result<()> {
        let mut paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
        paths.sort();
        paths.push("spec".to_string());
        let container = Container {
            id: id.to_string(),
            labels,
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: spec_json,
            }),
            ..Default::default()
        };
        self.client
            .containers()
            .update(self.request(UpdateContainerRequest {
                container: Some(container),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(|s| Error::containerd("update container", s))?;
        Ok(())
    }
}
