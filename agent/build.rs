//! Builds the init of pre-started sandboxes (the `fast-sandbox-init`
//! crate) as a static executable and leaves it in `OUT_DIR`, where the
//! agent embeds it: sandbox images may have no libc, and an init that
//! ships inside the agent binary always speaks the agent's protocol.
//!
//! rustc is called directly because the static C runtime is a
//! target-wide flag for cargo, and only this one executable needs it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let src = manifest.join("../init/src");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    println!("cargo::rerun-if-changed={}", src.display());
    let common = |cmd: &mut Command| {
        cmd.args(["--edition", "2024", "--target", &target])
            .args([
                "-C",
                "opt-level=s",
                "-C",
                "panic=abort",
                "-C",
                "codegen-units=1",
            ])
            .args(["-C", "target-feature=+crt-static", "-C", "strip=symbols"]);
    };
    let mut lib = Command::new(&rustc);
    common(&mut lib);
    lib.args(["--crate-type", "rlib", "--crate-name", "fast_sandbox_init"])
        .arg("-o")
        .arg(out.join("libfast_sandbox_init.rlib"))
        .arg(src.join("lib.rs"));
    run(lib);
    let mut bin = Command::new(&rustc);
    common(&mut bin);
    bin.args([
        "--crate-type",
        "bin",
        "--crate-name",
        "fast_sandbox_init_bin",
    ])
    .arg("--extern")
    .arg(format!(
        "fast_sandbox_init={}",
        out.join("libfast_sandbox_init.rlib").display()
    ))
    .arg("-o")
    .arg(out.join("fast-sandbox-init"))
    .arg(src.join("main.rs"));
    run(bin);
}

fn run(mut cmd: Command) {
    let status = cmd.status().expect("running rustc for the init");
    assert!(status.success(), "building the init failed: {cmd:?}");
}
