//! Hand-written OpenAPI schema fragments for fields whose Rust type does not
//! say enough to the apiserver (quantities, embedded pod templates).

use schemars::{Schema, SchemaGenerator, json_schema};

/// The Kubernetes resource quantity grammar (`500m`, `1.5`, `64Mi`, `1e3`).
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// A Kubernetes quantity: an integer or a string in the quantity grammar,
/// exactly as core types declare it, so `kubectl apply` rejects `10 bananas`.
pub fn quantity(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "pattern": QUANTITY_PATTERN,
        "nullable": true
    })
}

/// An embedded PodTemplateSpec kept as-is: the full pod schema is hundreds
/// of kilobytes, and the controller validates the template when it builds
/// agent pods (the apiserver validates the pod itself).
pub fn pod_template(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "Pod template for agent pods. The controller adds what an agent needs: privilege, the containerd socket and state directory, the agent certificate, labels and the owner reference."
    })
}
