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
/// of kilobytes; the webhook holds it to the operator's policy field by
/// field, and the controller copies only what the policy allows.
pub fn pod_template(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "What the pool asks of its agent pods, which run in the operator's namespace and are built from the operator's template: scheduling (nodeSelector, affinity, tolerations, topologySpreadConstraints, priorityClassName), the agent container's resources, an agent image the operator allows, and labels and annotations. Any other field is refused at admission."
    })
}

/// RFC 3339 as our types read it: at most nine fractional digits (the
/// apiserver's `date-time` format accepts more, which no component could
/// then decode), an upper-case `T` and `Z` or a numeric offset.
pub const DATE_TIME_PATTERN: &str = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$";

/// An optional instant the apiserver stores only if our types can read it.
pub fn date_time(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "format": "date-time",
        "pattern": DATE_TIME_PATTERN,
        "nullable": true
    })
}
