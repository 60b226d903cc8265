//! Validation of a Sandbox spec as a user submits it.

use super::FieldErrors;
use super::fields::{
    check_exec, check_image, check_limits, check_network, check_ports, is_dns1123_subdomain,
};
use crate::agent::ResourceLimits;
use crate::resources;
use crate::sandbox::SandboxSpec;

/// Longest `spec.terminationGracePeriodSeconds`: a deleted sandbox holds
/// its slot until its process exits.
pub const MAX_TERMINATION_GRACE_SECONDS: i64 = 300;
/// Most seconds `ttlSecondsAfterFinished` may say (a Job's bound, about 68
/// years): past it the deletion time would not be a time.
pub const MAX_TTL_SECONDS: i64 = i32::MAX as i64;

/// Turns a spec's resources into cgroup units, naming the field that fails.
pub fn limits_of(spec: &SandboxSpec) -> Result<ResourceLimits, FieldErrors> {
    spec.resources
        .as_ref()
        .map_or(Ok(ResourceLimits::default()), |r| {
            resources::parse(r, "spec.resources.")
        })
}

/// Validates a Sandbox spec as submitted by a user.
pub fn validate_sandbox_spec(spec: &SandboxSpec) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    if spec.image.trim().is_empty() {
        errs.push("spec.image", "is required and must not be empty");
    } else {
        check_image(&mut errs, "spec.image", &spec.image);
    }
    if spec.pool_ref.is_empty() {
        errs.push(
            "spec.poolRef",
            "is required and must name a SandboxPool in the same namespace",
        );
    } else if !is_dns1123_subdomain(&spec.pool_ref) {
        errs.push(
            "spec.poolRef",
            format!(
                "{:?} is not a valid object name (lower case letters, digits, '-' and '.')",
                spec.pool_ref
            ),
        );
    }
    check_exec(
        &mut errs,
        "spec.",
        &spec.command,
        &spec.args,
        &spec.env,
        spec.working_dir.as_deref(),
    );
    check_ports(&mut errs, "spec.", &spec.exposed_ports);
    check_network(&mut errs, "spec.network.", spec.network.as_ref());
    match limits_of(spec) {
        Ok(l) => check_limits(&mut errs, "spec.resources.", &l),
        Err(e) => errs.0.extend(e.0),
    }
    if let Some(t) = spec.ttl_seconds_after_finished {
        if t < 0 {
            errs.push("spec.ttlSecondsAfterFinished", "must not be negative");
        } else if t > MAX_TTL_SECONDS {
            errs.push(
                "spec.ttlSecondsAfterFinished",
                format!("must be at most {MAX_TTL_SECONDS} seconds, got {t}"),
            );
        }
    }
    if spec.expire_time.is_some() && spec.ttl_seconds_after_finished.is_some() {
        errs.push(
            "spec.expireTime",
            "set at most one of expireTime and ttlSecondsAfterFinished",
        );
    }
    if let Some(r) = spec.reset_revision
        && r < 0
    {
        errs.push("spec.resetRevision", "must not be negative");
    }
    if let Some(g) = spec.termination_grace_period_seconds
        && !(0..=MAX_TERMINATION_GRACE_SECONDS).contains(&g)
    {
        errs.push(
            "spec.terminationGracePeriodSeconds",
            format!("{g} is out of range: 0 to {MAX_TERMINATION_GRACE_SECONDS} seconds"),
        );
    }
    errs.into_result()
}
