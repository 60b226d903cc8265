//! A sandbox's effective limits: what it asks for, else its pool's
//! `sandboxDefaults`, else the operator's maximum for the namespace, and
//! never more than that maximum.
//!
//! Admission writes the result into `spec.resources`, so what a sandbox may
//! use is on the object for everyone to read, as a LimitRange does for Pods.
//! A sandbox that asks for more than the maximum is refused, naming the
//! field; a pool default above it (the operator lowered the maximum after
//! the pool was admitted) is lowered to it, because the tenant did not ask.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::agent::ResourceLimits;
use crate::quantity;
use crate::sandbox::SandboxResources;
use crate::validation::{FieldError, FieldErrors};

/// Turns resources into cgroup units; errors name `prefix` + the field
/// (`spec.resources.` gives `spec.resources.memory`).
pub fn parse(r: &SandboxResources, prefix: &str) -> Result<ResourceLimits, FieldErrors> {
    let mut errs = Vec::new();
    let mut limits = ResourceLimits {
        pids: r.pids,
        ..Default::default()
    };
    if let Some(cpu) = &r.cpu {
        match quantity::cpu_millis(cpu) {
            Ok(v) => limits.cpu_millis = Some(v),
            Err(e) => errs.push(error(format!("{prefix}cpu"), e.to_string())),
        }
    }
    if let Some(mem) = &r.memory {
        match quantity::bytes(mem) {
            Ok(v) => limits.memory_bytes = Some(v),
            Err(e) => errs.push(error(format!("{prefix}memory"), e.to_string())),
        }
    }
    if let Some(disk) = &r.ephemeral_storage {
        match quantity::bytes(disk) {
            Ok(v) => limits.ephemeral_storage_bytes = Some(v),
            Err(e) => errs.push(error(format!("{prefix}ephemeralStorage"), e.to_string())),
        }
    }
    if errs.is_empty() {
        Ok(limits)
    } else {
        Err(FieldErrors(errs))
    }
}

fn error(field: String, message: String) -> FieldError {
    FieldError { field, message }
}

/// The resources a new sandbox runs with, or `None` when nothing limits it.
///
/// `requested` is the sandbox's `spec.resources`, `defaults` its pool's
/// `spec.sandboxDefaults`, `max` the operator's maximum for `namespace`
/// (each field unset when there is none); errors name `prefix` + the field
/// of `requested` that asks too much. Inputs are assumed well formed
/// (validated before); a value that does not parse counts as unset.
pub fn effective(
    requested: Option<&SandboxResources>,
    defaults: Option<&SandboxResources>,
    max: &SandboxResources,
    namespace: &str,
    prefix: &str,
) -> Result<Option<SandboxResources>, FieldErrors> {
    let asked = requested.cloned().unwrap_or_default();
    let fallback = defaults.cloned().unwrap_or_default();
    let asked_l = parse(&asked, "").unwrap_or_default();
    let fallback_l = parse(&fallback, "").unwrap_or_default();
    let max_l = parse(max, "").unwrap_or_default();
    let mut errs = Vec::new();
    let mut pick = |field: &str, asked: Field, fallback: Field, max: Field| match asked {
        (Some(q), Some(v)) if max.1.is_some_and(|m| v > m) => {
            errs.push(error(
                format!("{prefix}{field}"),
                format!(
                    "{q} is more than the operator allows a sandbox in namespace {namespace} ({})",
                    max.0.unwrap_or_default()
                ),
            ));
            None
        }
        (Some(q), _) => Some(q),
        (None, _) => match fallback {
            (Some(_), Some(v)) if max.1.is_some_and(|m| v > m) => max.0,
            (Some(q), _) => Some(q),
            (None, _) => max.0,
        },
    };
    let cpu = pick(
        "cpu",
        (asked.cpu.map(|q| q.0), asked_l.cpu_millis),
        (fallback.cpu.map(|q| q.0), fallback_l.cpu_millis),
        (max.cpu.clone().map(|q| q.0), max_l.cpu_millis),
    );
    let memory = pick(
        "memory",
        (asked.memory.map(|q| q.0), asked_l.memory_bytes),
        (fallback.memory.map(|q| q.0), fallback_l.memory_bytes),
        (max.memory.clone().map(|q| q.0), max_l.memory_bytes),
    );
    let ephemeral_storage = pick(
        "ephemeralStorage",
        (
            asked.ephemeral_storage.map(|q| q.0),
            asked_l.ephemeral_storage_bytes,
        ),
        (
            fallback.ephemeral_storage.map(|q| q.0),
            fallback_l.ephemeral_storage_bytes,
        ),
        (
            max.ephemeral_storage.clone().map(|q| q.0),
            max_l.ephemeral_storage_bytes,
        ),
    );
    let as_u64 = |p: Option<i64>| p.map(|v| v.max(0) as u64);
    let pids = pick(
        "pids",
        (asked.pids.map(|v| v.to_string()), as_u64(asked.pids)),
        (fallback.pids.map(|v| v.to_string()), as_u64(fallback.pids)),
        (max.pids.map(|v| v.to_string()), as_u64(max.pids)),
    );
    if !errs.is_empty() {
        return Err(FieldErrors(errs));
    }
    let out = SandboxResources {
        cpu: cpu.map(Quantity),
        memory: memory.map(Quantity),
        pids: pids.and_then(|p| p.parse().ok()),
        ephemeral_storage: ephemeral_storage.map(Quantity),
    };
    let unset = out == SandboxResources::default();
    Ok((!unset).then_some(out))
}

/// One limit as written and as a number, when it parses.
type Field = (Option<String>, Option<u64>);

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cpu: Option<&str>, memory: Option<&str>, pids: Option<i64>) -> SandboxResources {
        SandboxResources {
            cpu: cpu.map(|c| Quantity(c.into())),
            memory: memory.map(|m| Quantity(m.into())),
            pids,
            ephemeral_storage: None,
        }
    }

    #[test]
    fn nothing_anywhere_leaves_the_sandbox_unlimited() {
        assert_eq!(
            effective(None, None, &r(None, None, None), "ns", "spec.resources.").unwrap(),
            None
        );
    }

    #[test]
    fn what_the_sandbox_asks_wins_then_the_pool_default_then_the_maximum() {
        let asked = r(Some("250m"), None, None);
        let defaults = r(Some("1"), Some("256Mi"), None);
        let max = r(Some("2"), Some("1Gi"), Some(512));
        assert_eq!(
            effective(Some(&asked), Some(&defaults), &max, "ns", "spec.resources.").unwrap(),
            Some(r(Some("250m"), Some("256Mi"), Some(512)))
        );
        assert_eq!(
            effective(
                None,
                Some(&defaults),
                &r(None, None, None),
                "ns",
                "spec.resources."
            )
            .unwrap(),
            Some(defaults.clone())
        );
    }

    #[test]
    fn asking_past_the_maximum_is_refused_naming_each_field() {
        let asked = r(Some("3"), Some("2Gi"), Some(1000));
        let max = r(Some("2"), Some("1Gi"), Some(512));
        let err = effective(Some(&asked), None, &max, "team", "spec.resources.").unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.resources.cpu",
                "spec.resources.memory",
                "spec.resources.pids"
            ]
        );
        assert_eq!(
            err.0[1].message,
            "2Gi is more than the operator allows a sandbox in namespace team (1Gi)"
        );
        // Equal to the maximum is allowed, in any unit.
        let same = r(Some("2000m"), Some("1024Mi"), Some(512));
        assert!(effective(Some(&same), None, &max, "team", "spec.resources.").is_ok());
    }

    #[test]
    fn the_writable_layer_takes_the_default_and_is_bounded_by_the_maximum() {
        let disk = |q: &str| SandboxResources {
            ephemeral_storage: Some(Quantity(q.into())),
            ..Default::default()
        };
        assert_eq!(
            effective(
                None,
                Some(&disk("256Mi")),
                &disk("1Gi"),
                "ns",
                "spec.resources."
            )
            .unwrap(),
            Some(disk("256Mi"))
        );
        let err = effective(
            Some(&disk("2Gi")),
            None,
            &disk("1Gi"),
            "ns",
            "spec.resources.",
        )
        .unwrap_err();
        assert_eq!(err.0[0].field, "spec.resources.ephemeralStorage");
        // No maximum and nothing asked: the layer stays on the node's disk.
        assert_eq!(
            effective(None, None, &SandboxResources::default(), "ns", "p.").unwrap(),
            None
        );
    }

    #[test]
    fn a_pool_default_above_the_maximum_is_lowered_to_it() {
        let defaults = r(Some("4"), Some("8Gi"), Some(4096));
        let max = r(Some("2"), Some("1Gi"), Some(512));
        assert_eq!(
            effective(None, Some(&defaults), &max, "ns", "spec.resources.").unwrap(),
            Some(max.clone())
        );
    }

    #[test]
    fn parse_names_the_field_under_its_prefix() {
        let err = parse(&r(Some("lots"), Some("1Zi"), None), "spec.sandboxDefaults.").unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.sandboxDefaults.cpu", "spec.sandboxDefaults.memory"]
        );
    }
}
