//! The OCI process of a command exec'd into a running sandbox.

use fast_sandbox_api::exec::ExecRequest;

use super::spec_err;
use crate::error::{Error, Result};

/// The OCI `process` of a command exec'd into a sandbox, as JSON: the
/// sandbox's own process (same user, capabilities, no-new-privileges,
/// rlimits, AppArmor and SELinux labels, whatever fields it has) with argv,
/// environment (the request's added to the sandbox's, replacing variables of
/// the same name), working directory and terminal replaced. Seccomp and
/// cgroups are the container's and apply to every process in it.
pub fn exec_process(container_spec: &[u8], req: &ExecRequest) -> Result<Vec<u8>> {
    let mut spec: serde_json::Value = serde_json::from_slice(container_spec)
        .map_err(|e| Error::Spec(format!("the container's spec is not JSON: {e}")))?;
    let Some(process) = spec.get_mut("process").and_then(|p| p.as_object_mut()) else {
        return Err(Error::Spec("the container's spec has no process".into()));
    };
    let mut env: Vec<String> = process
        .get("env")
        .and_then(|e| e.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for var in &req.env {
        let prefix = format!("{}=", var.name);
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{}={}", var.name, var.value));
    }
    process.insert("args".into(), serde_json::json!(req.command));
    process.insert("env".into(), serde_json::json!(env));
    if let Some(cwd) = &req.working_dir {
        process.insert("cwd".into(), serde_json::json!(cwd));
    }
    process.insert("terminal".into(), serde_json::json!(req.tty));
    match req.terminal_size.filter(|_| req.tty) {
        Some(size) => {
            process.insert(
                "consoleSize".into(),
                serde_json::json!({"height": size.height, "width": size.width}),
            );
        }
        None => {
            process.remove("consoleSize");
        }
    }
    serde_json::to_vec(process).map_err(spec_err)
}
