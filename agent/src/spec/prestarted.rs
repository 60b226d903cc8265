//! The spec of a pre-started sandbox and its launch message: a cold
//! sandbox's spec whose process is our init, waiting with the container's
//! directory mounted, and the argv, environment, working directory and
//! rlimits runc would have given the sandbox's own process, which the init
//! then execs.

use std::path::Path;

use fast_sandbox_api::agent::CreateSandboxRequest;
use fast_sandbox_init::launch::{Launch, Rlimit};
use fast_sandbox_init::{INIT, MOUNT_DIR};
use oci_spec::runtime::{LinuxCpuBuilder, MountBuilder, PosixRlimitType, Spec};

use super::{build, spec_err};
use crate::cgroup::limits::WAITING_CPU_SHARES;
use crate::error::{Error, Result};
use crate::image::ExecConfig;

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

/// The kernel's number of rlimit `t`.
// The constants are `c_uint` on glibc and `c_int` on musl.
#[allow(clippy::unnecessary_cast)]
pub(super) fn rlimit_number(t: PosixRlimitType) -> u32 {
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
