//! The OCI runtime spec of a sandbox: the image's process defaults merged
//! with the request (Kubernetes rules for command and args), default mounts,
//! masked and read-only paths, a small capability set, no new privileges,
//! the default seccomp profile, rlimits, its own namespaces (network
//! included: loopback only) and cgroup limits at a path nested under the
//! agent's own cgroup.

use std::collections::HashSet;
use std::path::Path;

use fast_sandbox_api::agent::{CreateSandboxRequest, ResourceLimits};
use fast_sandbox_api::exec::ExecRequest;
use fast_sandbox_init::launch::{Launch, Rlimit};
use fast_sandbox_init::{INIT, MOUNT_DIR};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, UserBuilder, get_default_maskedpaths, get_default_mounts,
    get_default_namespaces, get_default_readonly_paths,
};

use crate::cgroup::limits::WAITING_CPU_SHARES;
use crate::error::{Error, Result};
use crate::image::ExecConfig;
use crate::seccomp;
use crate::userns::{IDS_PER_SANDBOX, Mapping};

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

/// The spec of a pre-started sandbox of an image: a cold sandbox's (same
/// user, capabilities, no-new-privileges, seccomp, rlimits, masked paths,
/// namespaces, devices) whose process is our init, in `/`, with the
/// container's directory `dir` mounted and the lowest CPU weight until a
/// claim.
pub fn prestarted(image: &ExecConfig, cgroups_path: &str, dir: &Path) -> Result<Spec> {
    let req = CreateSandboxRequest {
        command: vec![format!("{MOUNT_DIR}/{INIT}"), MOUNT_DIR.to_string()],
        working_dir: Some("/".into()),
        ..Default::default()
    };
    let mut spec = build(&req, image, cgroups_path)?;
    add_prestart_mount(&mut spec, dir)?;
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut resources = linux.resources().clone().unwrap_or_default();
    resources.set_cpu(Some(
        LinuxCpuBuilder::default()
            .shares(WAITING_CPU_SHARES)
            .build()
            .map_err(spec_err)?,
    ));
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    Ok(spec)
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

/// Adds the read-only bind mount of a pre-started container's directory.
pub fn add_prestart_mount(spec: &mut Spec, dir: &Path) -> Result<()> {
    let mount = MountBuilder::default()
        .destination(MOUNT_DIR)
        .typ("bind")
        .source(dir)
        .options(
            ["rbind", "ro", "nosuid", "nodev"]
                .map(String::from)
                .to_vec(),
        )
        .build()
        .map_err(spec_err)?;
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(mount);
    spec.set_mounts(Some(mounts));
    Ok(())
}

// The constants are `c_uint` on glibc and `c_int` on musl.
#[allow(clippy::unnecessary_cast)]
fn rlimit_number(t: PosixRlimitType) -> u32 {
    use PosixRlimitType as T;
    let n = match t {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    };
    n as u32
}

/// The launch message of a sandbox whose spec is `spec` (a cold spec):
/// exactly the argv, environment, working directory and rlimits runc would
/// give its process.
pub fn launch_of(spec: &Spec) -> Result<Launch> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::Spec("the spec has no process".into()))?;
    Ok(Launch {
        args: process.args().clone().unwrap_or_default(),
        env: process.env().clone().unwrap_or_default(),
        cwd: process.cwd().display().to_string(),
        rlimits: process
            .rlimits()
            .iter()
            .flatten()
            .map(|r| Rlimit {
                resource: rlimit_number(r.typ()),
                soft: r.soft(),
                hard: r.hard(),
            })
            .collect(),
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use fast_sandbox_api::sandbox::EnvVar;

    fn image() -> ExecConfig {
        ExecConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["default".into()]),
            env: Some(vec!["PATH=/bin".into(), "A=image".into()]),
            working_dir: Some("/app".into()),
            user: None,
        }
    }

    fn req() -> CreateSandboxRequest {
        CreateSandboxRequest {
            uid: "u1".into(),
            name: "my_sandbox".into(),
            namespace: "ns".into(),
            image: "busybox".into(),
            ..Default::default()
        }
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let img = image();
        let mut r = req();
        assert_eq!(process_args(&r, &img), ["/entry", "default"]);
        r.args = vec!["x".into()];
        assert_eq!(process_args(&r, &img), ["/entry", "x"]);
        r.command = vec!["/bin/sh".into()];
        assert_eq!(process_args(&r, &img), ["/bin/sh", "x"]);
        r.args.clear();
        assert_eq!(process_args(&r, &img), ["/bin/sh"]);
    }

    #[test]
    fn request_env_overrides_image_env() {
        let mut r = req();
        r.env = vec![EnvVar {
            name: "A".into(),
            value: "req".into(),
        }];
        assert_eq!(merged_env(&r, &image()), ["PATH=/bin", "A=req"]);
        assert_eq!(
            merged_env(&r, &ExecConfig::default())[0],
            format!("PATH={DEFAULT_PATH}")
        );
    }

    #[test]
    fn user_must_be_numeric() {
        assert_eq!(user_ids(None).unwrap(), (0, 0));
        assert_eq!(user_ids(Some("1000")).unwrap(), (1000, 1000));
        assert_eq!(user_ids(Some("1000:5")).unwrap(), (1000, 5));
        assert!(user_ids(Some("nobody")).is_err());
    }

    #[test]
    fn spec_carries_limits_isolation_and_cgroup() {
        let mut r = req();
        r.limits = ResourceLimits {
            cpu_millis: Some(500),
            memory_bytes: Some(64 << 20),
            pids: Some(32),
            ephemeral_storage_bytes: None,
        };
        let spec = build(&r, &image(), "/parent/sandbox-u1").unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["hostname"], "my-sandbox");
        assert_eq!(json["process"]["cwd"], "/app");
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["root"]["path"], "rootfs");
        let linux = &json["linux"];
        assert_eq!(linux["cgroupsPath"], "/parent/sandbox-u1");
        assert_eq!(linux["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(linux["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(linux["resources"]["cpu"]["period"], 100_000);
        assert_eq!(linux["resources"]["pids"]["limit"], 32);
        assert_eq!(linux["resources"]["devices"][0]["allow"], false);
        assert!(
            linux["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "network" && n.get("path").is_none())
        );
        assert!(
            linux["maskedPaths"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == "/proc/kcore")
        );
        assert_eq!(linux["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let caps = json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert!(
            !caps
                .iter()
                .any(|c| c == "CAP_SYS_ADMIN" || c == "CAP_NET_RAW")
        );
    }

    #[test]
    fn exec_keeps_the_sandbox_process_identity_and_replaces_argv_env_cwd() {
        let mut r = req();
        r.limits.pids = Some(8);
        r.env = vec![EnvVar {
            name: "A".into(),
            value: "sandbox".into(),
        }];
        let spec = serde_json::to_vec(&build(&r, &image(), "/p/sandbox-u1").unwrap()).unwrap();
        let exec = ExecRequest {
            command: vec!["sh".into(), "-c".into(), "id".into()],
            env: vec![
                EnvVar {
                    name: "A".into(),
                    value: "exec".into(),
                },
                EnvVar {
                    name: "B".into(),
                    value: "1".into(),
                },
            ],
            working_dir: Some("/tmp".into()),
            tty: true,
            terminal_size: Some(fast_sandbox_api::exec::TerminalSize {
                width: 100,
                height: 30,
            }),
            ..Default::default()
        };
        let p: serde_json::Value =
            serde_json::from_slice(&exec_process(&spec, &exec).unwrap()).unwrap();
        let original: serde_json::Value = serde_json::from_slice(&spec).unwrap();
        let o = &original["process"];
        assert_eq!(p["args"], serde_json::json!(["sh", "-c", "id"]));
        assert_eq!(p["env"], serde_json::json!(["PATH=/bin", "A=exec", "B=1"]));
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["terminal"], true);
        assert_eq!(
            p["consoleSize"],
            serde_json::json!({"height": 30, "width": 100})
        );
        for same in ["user", "capabilities", "noNewPrivileges", "rlimits"] {
            assert_eq!(p[same], o[same], "{same}");
        }
        let plain = ExecRequest {
            command: vec!["true".into()],
            ..Default::default()
        };
        let p: serde_json::Value =
            serde_json::from_slice(&exec_process(&spec, &plain).unwrap()).unwrap();
        assert_eq!(p["cwd"], o["cwd"]);
        assert_eq!(p["terminal"], false);
        assert!(p.get("consoleSize").is_none());
        assert!(exec_process(b"{}", &plain).is_err());
    }

    #[test]
    fn a_prestarted_spec_is_a_cold_one_running_the_init() {
        let cold = serde_json::to_value(build(&req(), &image(), "/p/x").unwrap()).unwrap();
        let warm = prestarted(&image(), "/p/x", Path::new("/state/stock/x")).unwrap();
        let launch = launch_of(&build(&req(), &image(), "/p/x").unwrap()).unwrap();
        assert_eq!(launch.args, ["/entry", "default"]);
        assert_eq!(launch.cwd, "/app");
        assert_eq!(launch.rlimits.len(), 1);
        assert_eq!(
            launch.rlimits[0].resource,
            rlimit_number(PosixRlimitType::RlimitNofile)
        );
        assert_eq!(rlimit_number(PosixRlimitType::RlimitNofile), 7);
        let warm = serde_json::to_value(&warm).unwrap();
        assert_eq!(warm["process"]["args"][0], "/dev/.fast-sandbox/init");
        assert_eq!(warm["process"]["cwd"], "/");
        for same in ["user", "noNewPrivileges", "rlimits"] {
            assert_eq!(warm["process"][same], cold["process"][same], "{same}");
        }
        let caps = |v: &serde_json::Value| {
            let mut sets: Vec<(String, Vec<String>)> = v["process"]["capabilities"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    let mut names: Vec<String> = serde_json::from_value(v.clone()).unwrap();
                    names.sort();
                    (k.clone(), names)
                })
                .collect();
            sets.sort();
            sets
        };
        assert_eq!(caps(&warm), caps(&cold));
        for same in ["seccomp", "namespaces", "maskedPaths", "readonlyPaths"] {
            assert_eq!(warm["linux"][same], cold["linux"][same], "{same}");
        }
        assert_eq!(warm["linux"]["resources"]["cpu"]["shares"], 2);
        let mount = warm["mounts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(mount["destination"], "/dev/.fast-sandbox");
        assert_eq!(mount["source"], "/state/stock/x");
        assert!(
            mount["options"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o == "ro")
        );
    }

    #[test]
    fn no_command_anywhere_is_an_invalid_request() {
        let e = build(&req(), &ExecConfig::default(), "/x").unwrap_err();
        assert_eq!(e.to_api().field.as_deref(), Some("command"));
    }
}
