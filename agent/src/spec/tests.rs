//! Unit tests of sandbox specs: cold, pre-started and exec'd processes.

use std::path::Path;

use fast_sandbox_api::exec::ExecRequest;
use fast_sandbox_api::sandbox::EnvVar;

use super::prestarted::rlimit_number;
use super::*;

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
