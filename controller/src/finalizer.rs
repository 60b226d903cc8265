//! Removing one of our finalizers from an object without clobbering the
//! others': the list is replaced only if it is still the one read.

use std::fmt::Debug;

use json_patch::jsonptr::PointerBuf;
use json_patch::{PatchOperation, ReplaceOperation, TestOperation};
use kube::api::{Api, Patch, PatchParams};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::Error;

/// The patch that drops `ours` from `finalizers` (the list as read).
fn removal(finalizers: &[String], ours: &str) -> json_patch::Patch {
    let kept: Vec<&String> = finalizers.iter().filter(|f| *f != ours).collect();
    json_patch::Patch(vec![
        PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["metadata", "finalizers"]),
            value: json!(finalizers),
        }),
        PatchOperation::Replace(ReplaceOperation {
            path: PointerBuf::from_tokens(["metadata", "finalizers"]),
            value: json!(kept),
        }),
    ])
}

/// Drops `ours` from object `name`, whose finalizers were read as
/// `finalizers`; an object already gone is done.
pub async fn remove<K>(
    api: &Api<K>,
    name: &str,
    finalizers: &[String],
    ours: &str,
) -> Result<(), Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    let patch = removal(finalizers, ours);
    match api
        .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ours_goes_and_only_from_the_list_read() {
        let read = vec!["theirs".to_string(), "ours".to_string()];
        let mut obj = json!({"metadata": {"finalizers": read}});
        json_patch::patch(&mut obj, &removal(&read, "ours")).unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["theirs"]));
        // Someone changed the list since it was read: nothing is replaced.
        let mut changed = json!({"metadata": {"finalizers": ["theirs", "ours", "new"]}});
        assert!(json_patch::patch(&mut changed, &removal(&read, "ours")).is_err());
    }
}
