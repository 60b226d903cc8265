//! Reading and changing an image record's labels, key by key: what pins an
//! image against the kubelet's garbage collection (see [`crate::pin`]).

use std::collections::HashMap;

use containerd_client::services::v1::{
    GetImageRequest, Image, ListImagesRequest, UpdateImageRequest,
};

use super::Containerd;
use crate::error::{Error, Result};
use crate::pin::LabelChange;

impl Containerd {
    /// The labels of image `name`, or `None` when it is absent.
    pub async fn image_labels(&self, name: &str) -> Result<Option<HashMap<String, String>>> {
        let resp = self
            .client
            .images()
            .get(self.request(GetImageRequest {
                name: name.to_string(),
            }))
            .await;
        match resp {
            Ok(r) => Ok(r.into_inner().image.map(|i| i.labels)),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(Error::containerd("get image", s)),
        }
    }

    /// Every image of the namespace with its labels.
    pub async fn images_with_labels(&self) -> Result<Vec<(String, HashMap<String, String>)>> {
        let resp = self
            .client
            .images()
            .list(self.request(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(|s| Error::containerd("list images", s))?;
        Ok(resp
            .into_inner()
            .images
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
        let current = self
            .client
            .images()
            .get(self.request(GetImageRequest {
                name: name.to_string(),
            }))
            .await;
        let target = match current {
            Ok(r) => r.into_inner().image.and_then(|i| i.target),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(false),
            Err(s) => return Err(Error::containerd("get image", s)),
        };
        if target.is_none() {
            return Ok(false);
        }
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
            target,
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
