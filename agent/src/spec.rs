//! The OCI runtime spec of a sandbox: the image's process defaults merged
//! with the request (Kubernetes rules for command and args), default mounts,
//! masked and read-only paths, a small capability set, no new privileges,
//! the default seccomp profile, rlimits, its own namespaces (network
//! included: loopback only) and cgroup limits at a path nested under the
//! agent's own cgroup.

use std::collections::HashSet;

use fast_sandbox_api::agent::{CreateSandboxRequest, ResourceLimits};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec, UserBuilder, get_default_maskedpaths, get_default_mounts,
    get_default_namespaces, get_default_readonly_paths,
};

use crate::error::{Error, Result};
use crate::image::ExecConfig;
use crate::seccomp;
use crate::userns::{IDS_PER_SANDBOX, Mapping};

mod exec;
mod prestarted;
#[cfg(test)]
mod tests;

pub use exec::exec_process;
pub use prestarted::{add_prestart_mount, launch_of, prestarted};

/// `PATH` when neither the image nor the request sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period the CPU limit is expressed over (100 ms).
pub const CFS_PERIOD_US: u64 = 100_000;
/// Open-file limits of a sandbox's processes (soft, hard): low enough that
/// runc never needs to raise a limit above the node's.
pub const NOFILE_LIMIT: (u64, u64) = (1024, 4096);
/// Longest hostname the kernel accepts.
const MAX_HOSTNAME: usize = 63;

/// Capabilities a sandbox's process holds: containerd's defaults without
/// `NET_RAW` and `MKNOD` (no network to craft packets for, no devices to make).
pub const CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
    Capability::Setfcap,
];

/// The argv of a sandbox's process, by the Kubernetes rules: `command`
/// replaces the image's Entrypoint (and drops its Cmd); `args` replaces
/// Cmd.
pub fn process_args(req: &CreateSandboxRequest, image: &ExecConfig) -> Vec<String> {
    let entrypoint = if req.command.is_empty() {
        image.entrypoint.clone().unwrap_or_default()
    } else {
        req.command.clone()
    };
    let args = if !req.args.is_empty() {
        req.args.clone()
    } else if req.command.is_empty() {
        image.cmd.clone().unwrap_or_default()
    } else {
        Vec::new()
    };
    entrypoint.into_iter().chain(args).collect()
}

/// The environment: the image's, then the request's (a request variable
/// replaces an image variable of the same name), with a default `PATH`.
pub fn merged_env(req: &CreateSandboxRequest, image: &ExecConfig) -> Vec<String> {
    let mut env: Vec<String> = image.env.clone().unwrap_or_default();
    for var in &req.env {
        let prefix = format!("{}=", var.name);
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{}={}", var.name, var.value));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    env
}

/// The numeric user and group from an image's `User`; names need the
/// image's `/etc/passwd` and are refused.
pub fn user_ids(user: Option<&str>) -> Result<(u32, u32)> {
    let Some(user) = user.map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok((0, 0));
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid: u32 = u.parse().map_err(|_| {
        Error::Spec(format!(
            "image user {user:?} is not numeric; only uid[:gid] is supported"
        ))
    })?;
    let gid: u32 = match g {
        Some(g) => g
            .parse()
            .map_err(|_| Error::Spec(format!("image group in {user:?} is not numeric")))?,
        None => uid,
    };
    Ok((uid, gid))
}

/// A hostname from the sandbox name: valid characters only, at most 63.
pub fn hostname(name: &str) -> String {
    let h: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_HOSTNAME)
        .collect();
    if h.is_empty() { "sandbox".into() } else { h }
}

fn spec_err(e: impl std::fmt::Display) -> Error {
    Error::Spec(e.to_string())
}

/// Builds the runtime spec of one sandbox.
pub fn build(req: &CreateSandboxRequest, image: &ExecConfig, cgroups_path: &str) -> Result<Spec> {
    let args = process_args(req, image);
    if args.is_empty() {
        return Err(Error::Invalid(fast_sandbox_api::validation::FieldErrors(
            vec![fast_sandbox_api::validation::FieldError {
                field: "command".into(),
                message: "the image has no Entrypoint or Cmd; a command is required".into(),
            }],
        )));
    }
    let (uid, gid) = user_ids(image.user.as_deref())?;
    let cwd = req
        .working_dir
        .clone()
        .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    let caps: HashSet<Capability> = CAPABILITIES.iter().copied().collect();
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .build()
                .map_err(spec_err)?,
        )
        .args(args)
        .env(merged_env(req, image))
        .cwd(cwd)
        .no_new_privileges(true)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .build()
                .map_err(spec_err)?,
        )
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(NOFILE_LIMIT.0)
                .hard(NOFILE_LIMIT.1)
                .build()
                .map_err(spec_err)?,
        ])
        .build()
        .map_err(spec_err)?;
    let linux = LinuxBuilder::default()
        .namespaces(get_default_namespaces())
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .cgroups_path(cgroups_path)
        .resources(resources(&req.limits)?)
        .seccomp(seccomp::default_profile())
        .build()
        .map_err(spec_err)?;
    let mut spec = Spec::default();
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()
            .map_err(spec_err)?,
    ));
    spec.set_hostname(Some(hostname(&req.name)));
    spec.set_mounts(Some(get_default_mounts()));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Puts the sandbox in a user namespace of its own with `mapping`: its
/// ids 0..65535 are the slot's host ids. runc makes the namespace first,
/// so the others (network included) belong to it.
pub fn map_users(spec: &mut Spec, mapping: &Mapping) -> Result<()> {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    if !namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User)
    {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .build()
                .map_err(spec_err)?,
        );
    }
    linux.set_namespaces(Some(namespaces));
    let ids = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(mapping.host_base)
        .size(IDS_PER_SANDBOX)
        .build()
        .map_err(spec_err)?;
    linux.set_uid_mappings(Some(vec![ids]));
    linux.set_gid_mappings(Some(vec![ids]));
    spec.set_linux(Some(linux));
    Ok(())
}

/// The annotation the runc shim groups containers by: containers whose
/// runtime spec carries the same value share one shim process. The shim
/// reads it from the bundle's `config.json`; a container label of the same
/// name does nothing.
pub const SHIM_GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";

/// Makes the container's task share the shim process of `group`.
pub fn join_shim_group(spec: &mut Spec, group: &str) {
    let mut annotations = spec.annotations().clone().unwrap_or_default();
    annotations.insert(SHIM_GROUP_ANNOTATION.to_string(), group.to_string());
    spec.set_annotations(Some(annotations));
}

fn resources(limits: &ResourceLimits) -> Result<oci_spec::runtime::LinuxResources> {
    let deny_all = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(spec_err)?;
    let mut b = LinuxResourcesBuilder::default().devices(vec![deny_all]);
    if let Some(bytes) = limits.memory_bytes {
        let limit = i64::try_from(bytes).map_err(spec_err)?;
        b = b.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .build()
                .map_err(spec_err)?,
        );
    }
    if let Some(millis) = limits.cpu_millis {
        let quota = i64::try_from(millis * CFS_PERIOD_US / 1000).map_err(spec_err)?;
        b = b.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CFS_PERIOD_US)
                .build()
                .map_err(spec_err)?,
        );
    }
    if let Some(pids) = limits.pids {
        b = b.pids(
            LinuxPidsBuilder::default()
                .limit(pids)
                .build()
                .map_err(spec_err)?,
        );
    }
    b.build().map_err(spec_err)
}
