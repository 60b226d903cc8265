//! Unit tests of the validation: every message names its field.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::*;
use crate::agent::{CreateSandboxRequest, ResourceLimits};
use crate::pool::{MAX_PRESTARTED, PoolCapacity, SandboxPoolSpec};
use crate::sandbox::{EnvVar, ExposedPort, SandboxResources, SandboxSpec};

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
    s.command = vec!["".into(), "-c".into()];
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
            "spec.command[0]",
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
    assert_eq!(fields(validate_sandbox_spec(&s)), ["spec.args"]);
    // Named after the part to shrink.
    let mut s = spec();
    s.env = vec![EnvVar {
        name: "BIG".into(),
        value: "x".repeat(MAX_EXEC_BYTES),
    }];
    assert_eq!(fields(validate_sandbox_spec(&s)), ["spec.env"]);
    // An empty argument is an argument; only the program must be named.
    let mut s = spec();
    s.command = vec![
        "sh".into(),
        "-c".into(),
        "echo \"$0\"".into(),
        String::new(),
    ];
    assert!(validate_sandbox_spec(&s).is_ok());
    s.command[0] = String::new();
    assert_eq!(fields(validate_sandbox_spec(&s)), ["spec.command[0]"]);
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
        fields(validate_sandbox_spec(&s)).contains(&"spec.resources.ephemeralStorage".to_string())
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
        session: Some("9f1c-ab".into()),
        ..Default::default()
    };
    assert!(validate_exec_request(&ok).is_ok());
    let bad = ExecRequest {
        command: vec![],
        session: Some("../x".into()),
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
            "session",
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
