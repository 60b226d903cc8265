//! API discovery of the access group, as the aggregator and kubectl read
//! it: `/apis`, `/apis/{group}` and `/apis/{group}/{version}`. The group
//! serves only subresources of sandboxes (the Sandbox itself is the CRD's).

use fast_sandbox_api::wellknown::{SUBRESOURCE_GROUP, VERSION};
use serde_json::{Value, json};

/// The subresources served, with the verbs RBAC checks for each.
pub const RESOURCES: &[(&str, &[&str])] = &[
    ("sandboxes/log", &["get"]),
    ("sandboxes/exec", &["get", "create"]),
    ("sandboxes/files", &["get", "create", "update", "delete"]),
];

fn group_version() -> String {
    format!("{SUBRESOURCE_GROUP}/{VERSION}")
}

fn group() -> Value {
    let gv = json!({"groupVersion": group_version(), "version": VERSION});
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": SUBRESOURCE_GROUP,
        "versions": [gv],
        "preferredVersion": gv,
    })
}

/// `GET /apis`.
pub fn group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group()]})
}

/// `GET /apis/{group}`.
pub fn api_group() -> Value {
    group()
}

/// `GET /apis/{group}/{version}`.
pub fn resource_list() -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .map(|(name, verbs)| {
            json!({
                "name": name,
                "singularName": "",
                "namespaced": true,
                "kind": "Sandbox",
                "verbs": verbs,
            })
        })
        .collect();
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(),
        "resources": resources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_names_the_group_and_its_subresources() {
        assert_eq!(group_list()["groups"][0]["name"], SUBRESOURCE_GROUP);
        let r = resource_list();
        assert_eq!(r["groupVersion"], "subresources.sandbox.fast.io/v1alpha1");
        assert_eq!(r["resources"][0]["name"], "sandboxes/log");
        assert_eq!(api_group()["preferredVersion"]["version"], VERSION);
    }
}
