//! Validation of a SandboxPool spec.

use super::FieldErrors;
use super::fields::{check_image, check_limits, check_network};
use crate::pool::{MAX_PRESTARTED, SandboxPoolSpec};
use crate::resources;

/// Validates a SandboxPool spec.
pub fn validate_pool_spec(spec: &SandboxPoolSpec) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    let c = &spec.capacity;
    for (name, v) in [
        ("poolMin", c.pool_min),
        ("poolMax", c.pool_max),
        ("bufferMin", c.buffer_min),
        ("bufferMax", c.buffer_max),
    ] {
        if let Some(v) = v
            && v < 0
        {
            errs.push(format!("spec.capacity.{name}"), "must not be negative");
        }
    }
    if let (Some(min), Some(max)) = (c.pool_min, c.pool_max)
        && min > max
    {
        errs.push(
            "spec.capacity.poolMin",
            format!("poolMin ({min}) must be less than or equal to poolMax ({max})"),
        );
    }
    if let (Some(min), Some(max)) = (c.buffer_min, c.buffer_max)
        && min > max
    {
        errs.push(
            "spec.capacity.bufferMin",
            format!("bufferMin ({min}) must be less than or equal to bufferMax ({max})"),
        );
    }
    if let Some(s) = spec.max_sandboxes_per_agent
        && s < 1
    {
        errs.push(
            "spec.maxSandboxesPerAgent",
            format!("must be at least 1, got {s}"),
        );
    }
    if let (Some(r), Some(max)) = (spec.replicas, c.pool_max)
        && r > max
    {
        errs.push(
            "spec.replicas",
            format!("must not exceed capacity.poolMax ({max})"),
        );
    }
    for (i, img) in spec.warm_images.iter().enumerate() {
        check_image(&mut errs, &format!("spec.warmImages[{i}]"), img);
    }
    check_network(
        &mut errs,
        "spec.defaultNetwork.",
        spec.default_network.as_ref(),
    );
    if let Some(d) = &spec.sandbox_defaults {
        match resources::parse(d, "spec.sandboxDefaults.") {
            Ok(l) => check_limits(&mut errs, "spec.sandboxDefaults.", &l),
            Err(e) => errs.0.extend(e.0),
        }
    }
    if let Some(p) = spec.prestarted
        && !(0..=MAX_PRESTARTED).contains(&p)
    {
        errs.push(
            "spec.prestarted",
            format!(
                "must be between 0 (no pre-started sandboxes) and {MAX_PRESTARTED} per warm image, got {p}"
            ),
        );
    }
    errs.into_result()
}
