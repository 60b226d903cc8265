//! The rules of fields that sandboxes, pools and agent requests share
//! (names, images, commands, ports, networks, resource limits) and their
//! bounds. Each check adds what it finds to the caller's [`FieldErrors`],
//! under the caller's field prefix, so one answer names every problem.

use std::collections::HashSet;

use super::FieldErrors;
use crate::agent::ResourceLimits;
use crate::image::ImageRef;
use crate::network::SandboxNetwork;
use crate::sandbox::{EnvVar, ExposedPort, PortProtocol};

/// Most bytes of command, args and env together (what `execve` accepts on
/// Linux is larger, but a sandbox spec is not the place for a payload).
pub const MAX_EXEC_BYTES: usize = 128 * 1024;
/// Smallest memory limit runc can start a process in.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// Largest memory limit accepted (1 TiB).
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;
/// Largest CPU limit accepted, in millicores (1024 cores).
pub const MAX_CPU_MILLIS: u64 = 1024 * 1000;
/// Smallest CPU limit accepted (1 millicore is below CFS's 1 ms quota).
pub const MIN_CPU_MILLIS: u64 = 10;
/// Largest pids limit accepted.
pub const MAX_PIDS: i64 = 4_194_304;
/// Smallest writable layer accepted: an image's first writes (a shell's
/// history, a package manager's lock) need some room.
pub const MIN_EPHEMERAL_STORAGE_BYTES: u64 = 1024 * 1024;
/// Largest writable layer cap accepted (1 TiB, as memory: it is memory).
pub const MAX_EPHEMERAL_STORAGE_BYTES: u64 = 1 << 40;
/// Longest `workingDir` (the kernel's `PATH_MAX`).
pub const MAX_WORKING_DIR_BYTES: usize = 4096;

/// Whether `name` is a valid environment variable name, by the rule Pods use
/// (`[-._a-zA-Z][-._a-zA-Z0-9]*`).
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || "-._".contains(c) => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// Whether `name` is a DNS-1123 subdomain (the rule for object names).
pub fn is_dns1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

pub(super) fn check_image(errs: &mut FieldErrors, field: &str, image: &str) {
    if let Err(e) = ImageRef::parse(image) {
        errs.push(field, e.to_string());
    }
}

pub(super) fn check_exec(
    errs: &mut FieldErrors,
    prefix: &str,
    command: &[String],
    args: &[String],
    env: &[EnvVar],
    working_dir: Option<&str>,
) {
    for (i, c) in command.iter().enumerate() {
        // The program must be named; an empty argument after it is an
        // argument like any other (as a Pod takes it).
        if i == 0 && c.is_empty() {
            errs.push(format!("{prefix}command[{i}]"), "must not be empty");
        }
        if c.contains('\0') {
            errs.push(format!("{prefix}command[{i}]"), "must not contain NUL");
        }
    }
    for (i, a) in args.iter().enumerate() {
        if a.contains('\0') {
            errs.push(format!("{prefix}args[{i}]"), "must not contain NUL");
        }
    }
    for (i, e) in env.iter().enumerate() {
        if !is_env_name(&e.name) {
            errs.push(
                format!("{prefix}env[{i}].name"),
                format!(
                    "invalid environment variable name {:?}: must start with a letter, '-', '.' or '_' and contain only letters, digits, '-', '.' and '_'",
                    e.name
                ),
            );
        }
        if e.value.contains('\0') {
            errs.push(format!("{prefix}env[{i}].value"), "must not contain NUL");
        }
    }
    let words = |w: &[String]| w.iter().map(|s| s.len() + 1).sum::<usize>();
    let parts = [
        ("command", words(command)),
        ("args", words(args)),
        (
            "env",
            env.iter()
                .map(|e| e.name.len() + e.value.len() + 2)
                .sum::<usize>(),
        ),
    ];
    let bytes: usize = parts.iter().map(|(_, n)| n).sum();
    if bytes > MAX_EXEC_BYTES {
        // Named after the largest part: the one to shrink.
        let field = parts
            .iter()
            .max_by_key(|(_, n)| *n)
            .map_or("command", |(f, _)| f);
        errs.push(
            format!("{prefix}{field}"),
            format!(
                "command, args and env total {bytes} bytes; at most {MAX_EXEC_BYTES} are allowed"
            ),
        );
    }
    if let Some(w) = working_dir {
        if w.len() > MAX_WORKING_DIR_BYTES {
            errs.push(
                format!("{prefix}workingDir"),
                format!(
                    "is {} bytes; at most {MAX_WORKING_DIR_BYTES} are allowed",
                    w.len()
                ),
            );
        } else if w.contains('\0') {
            errs.push(format!("{prefix}workingDir"), "must not contain NUL");
        } else if !w.starts_with('/') {
            errs.push(
                format!("{prefix}workingDir"),
                format!("must be an absolute path, got {w:?}"),
            );
        }
    }
}

pub(super) fn check_ports(errs: &mut FieldErrors, prefix: &str, ports: &[ExposedPort]) {
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        if !(1..=65535).contains(&p.port) {
            errs.push(
                format!("{prefix}exposedPorts[{i}].port"),
                format!("must be between 1 and 65535, got {}", p.port),
            );
        }
        if p.protocol == PortProtocol::UDP {
            errs.push(
                format!("{prefix}exposedPorts[{i}].protocol"),
                "UDP is not supported yet: only TCP ports are forwarded".to_string(),
            );
        }
        if !seen.insert((p.port, p.protocol)) {
            errs.push(
                format!("{prefix}exposedPorts[{i}].port"),
                format!("duplicate port {} / {:?}", p.port, p.protocol),
            );
        }
    }
}

pub(super) fn check_network(
    errs: &mut FieldErrors,
    prefix: &str,
    network: Option<&SandboxNetwork>,
) {
    for (field, message) in network.map(|n| n.problems(prefix)).unwrap_or_default() {
        errs.push(field, message);
    }
}

pub(super) fn check_limits(errs: &mut FieldErrors, prefix: &str, limits: &ResourceLimits) {
    if let Some(c) = limits.cpu_millis
        && !(MIN_CPU_MILLIS..=MAX_CPU_MILLIS).contains(&c)
    {
        errs.push(
            format!("{prefix}cpu"),
            format!(
                "must be between {MIN_CPU_MILLIS}m and {} cores, got {c}m",
                MAX_CPU_MILLIS / 1000
            ),
        );
    }
    if let Some(m) = limits.memory_bytes
        && !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&m)
    {
        errs.push(
            format!("{prefix}memory"),
            format!("must be between 6Mi and 1Ti, got {m} bytes"),
        );
    }
    if let Some(p) = limits.pids
        && !(1..=MAX_PIDS).contains(&p)
    {
        errs.push(
            format!("{prefix}pids"),
            format!("must be between 1 and {MAX_PIDS}, got {p}"),
        );
    }
    if let Some(d) = limits.ephemeral_storage_bytes
        && !(MIN_EPHEMERAL_STORAGE_BYTES..=MAX_EPHEMERAL_STORAGE_BYTES).contains(&d)
    {
        errs.push(
            format!("{prefix}ephemeralStorage"),
            format!("must be between 1Mi and 1Ti, got {d} bytes"),
        );
    }
}
