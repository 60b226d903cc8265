//! Validation of the request bodies the agent receives (a sandbox create,
//! an exec's start frame): the agent checks them itself instead of
//! trusting its caller. Field paths are relative to the body.

use super::FieldErrors;
use super::fields::{check_exec, check_image, check_limits, check_network, check_ports};
use crate::agent::CreateSandboxRequest;

/// Validates a create request at the agent; `field` paths are relative to
/// the request body.
pub fn validate_create_request(req: &CreateSandboxRequest) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    for (field, v) in [
        ("uid", &req.uid),
        ("name", &req.name),
        ("namespace", &req.namespace),
    ] {
        if v.is_empty() {
            errs.push(field, "is required");
        } else if v.len() > 253
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            errs.push(
                field,
                format!("{v:?} is not a valid Kubernetes name or UID"),
            );
        }
    }
    if req.image.trim().is_empty() {
        errs.push("image", "is required");
    } else {
        check_image(&mut errs, "image", &req.image);
    }
    check_exec(
        &mut errs,
        "",
        &req.command,
        &req.args,
        &req.env,
        req.working_dir.as_deref(),
    );
    check_ports(&mut errs, "", &req.exposed_ports);
    check_network(&mut errs, "network.", req.network.as_ref());
    check_limits(&mut errs, "limits.", &req.limits);
    errs.into_result()
}

/// Longest exec timeout accepted (a week): a larger one is a mistake.
pub const MAX_EXEC_TIMEOUT_SECONDS: u64 = 7 * 24 * 3600;

/// Validates the start frame of an exec; `field` paths are relative to it.
pub fn validate_exec_request(req: &crate::exec::ExecRequest) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    if req.command.is_empty() {
        errs.push("command", "is required");
    }
    check_exec(
        &mut errs,
        "",
        &req.command,
        &[],
        &req.env,
        req.working_dir.as_deref(),
    );
    match req.timeout_seconds {
        Some(0) => errs.push("timeoutSeconds", "must be at least 1"),
        Some(t) if t > MAX_EXEC_TIMEOUT_SECONDS => errs.push(
            "timeoutSeconds",
            format!("{t} is more than {MAX_EXEC_TIMEOUT_SECONDS}"),
        ),
        _ => {}
    }
    if let Some(session) = &req.session
        && (session.is_empty()
            || session.len() > 64
            || !session
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        errs.push("session", "must be 1 to 64 letters, digits and '-'");
    }
    if let Some(size) = req.terminal_size {
        if !req.tty {
            errs.push("terminalSize", "needs tty");
        } else if size.width == 0 || size.height == 0 {
            errs.push("terminalSize", "width and height must be at least 1");
        }
    }
    errs.into_result()
}
