//! Validation the OpenAPI schema cannot express, shared by the admission
//! webhook (which answers `kubectl apply`) and the agent (which must not
//! trust its caller either). Every message names the field.

use std::collections::HashSet;
use std::fmt;

use crate::agent::{CreateSandboxRequest, ResourceLimits};
use crate::image::ImageRef;
use crate::network::SandboxNetwork;
use crate::pool::{MAX_PRESTARTED, SandboxPoolSpec};
use crate::resources;
use crate::sandbox::{EnvVar, ExposedPort, PortProtocol, SandboxSpec};

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
/// Longest `spec.terminationGracePeriodSeconds`: a deleted sandbox holds
/// its slot until its process exits.
pub const MAX_TERMINATION_GRACE_SECONDS: i64 = 300;
/// Most seconds `ttlSecondsAfterFinished` may say (a Job's bound, about 68
/// years): past it the deletion time would not be a time.
pub const MAX_TTL_SECONDS: i64 = i32::MAX as i64;
/// Longest `workingDir` (the kernel's `PATH_MAX`).
pub const MAX_WORKING_DIR_BYTES: usize = 4096;

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.env[2].name`.
    pub field: String,
    /// Why it is invalid.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All invalid fields of an object, so a user fixes them in one round.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct FieldErrors(pub Vec<FieldError>);

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl FieldErrors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn into_result(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// The first error, if any.
    pub fn first(&self) -> Option<&FieldError> {
        self.0.first()
    }
}

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

fn check_image(errs: &mut FieldErrors, field: &str, image: &str) {
    if let Err(e) = ImageRef::parse(image) {
        errs.push(field, e.to_string());
    }
}

fn check_exec(
    errs: &mut FieldErrors,
    prefix: &str,
    command: &[String],
    args: &[String],
    env: &[EnvVar],
    working_dir: Option<&str>,
) {
    for (i, c) in command.iter().enumerate() {
        if c.is_empty() {
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
    let bytes: usize = command
        .iter()
        .chain(args)
        .map(|s| s.len() + 1)
        .sum::<usize>()
        + env
            .iter()
            .map(|e| e.name.len() + e.value.len() + 2)
            .sum::<usize>();
    if bytes > MAX_EXEC_BYTES {
        errs.push(
            format!("{prefix}command"),
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

fn check_ports(errs: &mut FieldErrors, prefix: &str, ports: &[ExposedPort]) {
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

fn check_network(errs: &mut FieldErrors, prefix: &str, network: Option<&SandboxNetwork>) {
    for (field, message) in network.map(|n| n.problems(prefix)).unwrap_or_default() {
        errs.push(field, message);
    }
}

fn check_limits(errs: &mut FieldErrors, prefix: &str, limits: &ResourceLimits) {
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
    if let Some(size) = req.terminal_size {
        if !req.tty {
            errs.push("terminalSize", "needs tty");
        } else if size.width == 0 || size.height == 0 {
            errs.push("terminalSize", "width and height must be at least 1");
        }
    }
    errs.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolCapacity;
    use crate::sandbox::SandboxResources;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn spec() -> SandboxSpec {
        SandboxSpec {
            image: "busybox".into(),
            pool_ref: "default-pool".into(),
            ..Default::default()
        }
    }

    fn fields(r: Result<(), FieldErrors>) -> Vec<String> {
        r.err()
            .map(|e| e.0.into_iter().map(|f| f.field).collect())
            .unwrap_or_default()
    }

    #[test]
    fn minimal_spec_is_valid() {
        assert_eq!(validate_sandbox_spec(&spec()), Ok(()));
    }

    #[test]
    fn the_termination_grace_period_is_bounded() {
        for ok in [0, 1, MAX_TERMINATION_GRACE_SECONDS] {
            let s = SandboxSpec {
                termination_grace_period_seconds: Some(ok),
                ..spec()
            };
            assert_eq!(validate_sandbox_spec(&s), Ok(()), "{ok}");
        }
        for bad in [-1, MAX_TERMINATION_GRACE_SECONDS + 1, i64::MAX] {
            let s = SandboxSpec {
                termination_grace_period_seconds: Some(bad),
                ..spec()
            };
            assert_eq!(
                fields(validate_sandbox_spec(&s)),
                ["spec.terminationGracePeriodSeconds"],
                "{bad}"
            );
        }
    }

    #[test]
    fn empty_image_and_missing_pool_are_named() {
        let s = SandboxSpec::default();
        assert_eq!(
            fields(validate_sandbox_spec(&s)),
            ["spec.image", "spec.poolRef"]
        );
        let mut s = spec();
        s.image = "Not An Image".into();
        assert_eq!(fields(validate_sandbox_spec(&s)), ["spec.image"]);
    }

    #[test]
    fn env_command_and_workdir_are_checked() {
        let mut s = spec();
        s.command = vec!["/bin/sh".into(), "".into()];
        s.env = vec![
            EnvVar {
                name: "GOOD_1".into(),
                value: "x".into(),
            },
            EnvVar {
                name: "1BAD".into(),
                value: "x".into(),
            },
            EnvVar {
                name: "".into(),
                value: "".into(),
            },
        ];
        s.working_dir = Some("relative".into());
        let e = validate_sandbox_spec(&s).unwrap_err();
        let f: Vec<_> = e.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            f,
            [
                "spec.command[1]",
                "spec.env[1].name",
                "spec.env[2].name",
                "spec.workingDir"
            ]
        );
        assert!(e.to_string().contains("\"1BAD\""), "{e}");
    }

    #[test]
    fn a_working_dir_with_nul_or_past_path_max_is_refused() {
        for (w, says) in [
            ("/tmp\0x".to_string(), "NUL"),
            (
                format!("/{}", "d".repeat(MAX_WORKING_DIR_BYTES)),
                "at most 4096",
            ),
        ] {
            let mut s = spec();
            s.working_dir = Some(w);
            let e = validate_sandbox_spec(&s).unwrap_err();
            assert_eq!(fields(Err(e.clone())), ["spec.workingDir"]);
            assert!(e.to_string().contains(says), "{e}");
        }
        let mut s = spec();
        s.working_dir = Some(format!("/{}", "d".repeat(MAX_WORKING_DIR_BYTES - 1)));
        assert!(validate_sandbox_spec(&s).is_ok());
    }

    #[test]
    fn a_ttl_is_bounded_as_a_jobs() {
        let mut s = spec();
        s.ttl_seconds_after_finished = Some(MAX_TTL_SECONDS);
        assert!(validate_sandbox_spec(&s).is_ok());
        for ttl in [MAX_TTL_SECONDS + 1, i64::MAX, -1] {
            s.ttl_seconds_after_finished = Some(ttl);
            assert_eq!(
                fields(validate_sandbox_spec(&s)),
                ["spec.ttlSecondsAfterFinished"],
                "{ttl}"
            );
        }
    }

    #[test]
    fn oversized_command_is_refused() {
        let mut s = spec();
        s.args = vec!["x".repeat(MAX_EXEC_BYTES)];
        assert_eq!(fields(validate_sandbox_spec(&s)), ["spec.command"]);
    }

    #[test]
    fn ports_out_of_range_or_duplicate() {
        let mut s = spec();
        s.exposed_ports = [0, 70000, 8080, 8080]
            .into_iter()
            .map(|port| ExposedPort {
                port,
                ..Default::default()
            })
            .collect();
        assert_eq!(
            fields(validate_sandbox_spec(&s)),
            [
                "spec.exposedPorts[0].port",
                "spec.exposedPorts[1].port",
                "spec.exposedPorts[3].port"
            ]
        );
    }

    #[test]
    fn resources_are_parsed_and_bounded() {
        let mut s = spec();
        s.resources = Some(SandboxResources {
            cpu: Some(Quantity("500m".into())),
            memory: Some(Quantity("64Mi".into())),
            pids: Some(64),
            ephemeral_storage: Some(Quantity("1Gi".into())),
        });
        assert_eq!(validate_sandbox_spec(&s), Ok(()));
        assert_eq!(
            limits_of(&s).unwrap(),
            ResourceLimits {
                cpu_millis: Some(500),
                memory_bytes: Some(64 << 20),
                pids: Some(64),
                ephemeral_storage_bytes: Some(1 << 30),
            }
        );
        s.resources = Some(SandboxResources {
            cpu: Some(Quantity("lots".into())),
            memory: Some(Quantity("1Ki".into())),
            pids: Some(0),
            ephemeral_storage: Some(Quantity("512Ki".into())),
        });
        assert_eq!(fields(validate_sandbox_spec(&s)), ["spec.resources.cpu"]);
        s.resources.as_mut().unwrap().cpu = None;
        assert_eq!(
            fields(validate_sandbox_spec(&s)),
            [
                "spec.resources.memory",
                "spec.resources.pids",
                "spec.resources.ephemeralStorage"
            ]
        );
        s.resources.as_mut().unwrap().ephemeral_storage = Some(Quantity("a lot".into()));
        assert!(
            fields(validate_sandbox_spec(&s))
                .contains(&"spec.resources.ephemeralStorage".to_string())
        );
    }

    #[test]
    fn pool_bounds_are_checked() {
        let mut p = SandboxPoolSpec {
            capacity: PoolCapacity {
                pool_min: Some(5),
                pool_max: Some(1),
                buffer_min: Some(3),
                buffer_max: Some(2),
            },
            max_sandboxes_per_agent: Some(-1),
            ..Default::default()
        };
        assert_eq!(
            fields(validate_pool_spec(&p)),
            [
                "spec.capacity.poolMin",
                "spec.capacity.bufferMin",
                "spec.maxSandboxesPerAgent"
            ]
        );
        p.capacity = PoolCapacity {
            pool_min: Some(1),
            pool_max: Some(5),
            ..Default::default()
        };
        p.max_sandboxes_per_agent = Some(4);
        assert_eq!(validate_pool_spec(&p), Ok(()));
    }

    #[test]
    fn prestarted_is_bounded() {
        for ok in [None, Some(0), Some(4), Some(MAX_PRESTARTED)] {
            let p = SandboxPoolSpec {
                prestarted: ok,
                ..Default::default()
            };
            assert_eq!(validate_pool_spec(&p), Ok(()), "{ok:?}");
        }
        for bad in [-1, MAX_PRESTARTED + 1, i32::MAX] {
            let p = SandboxPoolSpec {
                prestarted: Some(bad),
                ..Default::default()
            };
            let e = validate_pool_spec(&p).unwrap_err();
            assert_eq!(fields(Err(e.clone())), ["spec.prestarted"]);
            assert!(e.to_string().contains(&format!("got {bad}")), "{e}");
        }
    }

    #[test]
    fn create_request_names_fields_relative_to_body() {
        let req = CreateSandboxRequest {
            uid: "".into(),
            name: "n".into(),
            namespace: "ns".into(),
            image: "busybox".into(),
            command: vec!["".into()],
            limits: ResourceLimits {
                memory_bytes: Some(1 << 50),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            fields(validate_create_request(&req)),
            ["uid", "command[0]", "limits.memory"]
        );
    }

    #[test]
    fn exec_requests_name_their_fields() {
        use crate::exec::{ExecRequest, TerminalSize};
        let ok = ExecRequest {
            command: vec!["true".into()],
            ..Default::default()
        };
        assert!(validate_exec_request(&ok).is_ok());
        let bad = ExecRequest {
            command: vec![],
            working_dir: Some("tmp".into()),
            timeout_seconds: Some(0),
            terminal_size: Some(TerminalSize {
                width: 80,
                height: 24,
            }),
            env: vec![EnvVar {
                name: "1X".into(),
                value: String::new(),
            }],
            ..Default::default()
        };
        assert_eq!(
            fields(validate_exec_request(&bad)),
            [
                "command",
                "env[0].name",
                "workingDir",
                "timeoutSeconds",
                "terminalSize"
            ]
        );
    }

    #[test]
    fn name_rules() {
        assert!(is_env_name("_A.b-c9"));
        assert!(!is_env_name("9a"));
        assert!(!is_env_name("a=b"));
        assert!(is_dns1123_subdomain("default-pool"));
        assert!(!is_dns1123_subdomain("Default"));
        assert!(!is_dns1123_subdomain("-a"));
    }
}
