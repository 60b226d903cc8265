//! Reading and changing an image record's labels, key by key: what pins an
//! image against the kubelet's garbage collection (see [`crate::pin`]).

use std::collections::HashMap;

use containerd_client::services::v1::{Image, UpdateImageRequest};

use super::Containerd;
use crate::error::{Error, Result};
use crate::pin::LabelChange;

impl Containerd {
    /// The labels of image `name`, or `None` when it is absent.
    pub async fn image_labels(&self, name: &str) -> Result<Option<HashMap<String, String>>> {
        Ok(self.image(name).await?.map(|i| i.labels))
    }

    /// Every image of the namespace with its labels.
    pub async fn images_with_labels(&self) -> Result<Vec<(String, HashMap<String, String>)>> {
        Ok(self
            .images()
            .await?
            .into_iter()
            .map(|i| (i.name, i.labels))
            .collect())
    }

    /// Applies `change` to the labels of image `name`, each key named in
    /// the field mask so the image's other labels (and concurrent changes
    /// to them) are kept. False when the image is absent.
    pub async fn update_image_labels(&self, name: &str, change: &LabelChange) -> Result<bool> {
        // The record goes whole, target included (containerd dereferences
        // it whatever the mask says); the mask limits what changes.
        let Some(target) = self.image(name).await?.and_then(|i| i.target) else {
            return Ok(false);
        };
        let mut paths: Vec<String> = change
            .set
            .keys()
            .chain(change.remove.iter())
            .map(|k| format!("labels.{k}"))
            .collect();
        paths.sort();
        let image = Image {
            name: name.to_string(),
            labels: change.set.clone(),
            target: Some(target),
            ..Default::default()
        };
        let resp = self
            .client
            .images()
            .update(self.request(UpdateImageRequest {
                image: Some(image),
                update_mask: Some(prost_types::FieldMask { paths }),
                source_date_epoch: None,
            }))
            .await;
        match resp {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(Error::containerd("update image", s)),
        }
    }
}
