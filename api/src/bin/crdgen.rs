//! Writes the CRD YAML generated from the Rust types.
//!
//! `cargo run -p fast-sandbox-api --bin crdgen` rewrites `deploy/crds/`;
//! `--check` fails when the checked-in files differ; `--stdout` prints them.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    let docs = match fast_sandbox_api::crd::documents() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("crdgen: rendering the CRDs failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    match mode.as_str() {
        "--stdout" => {
            for (_, yaml) in &docs {
                println!("---\n{yaml}");
            }
        }
        "--check" => {
            let mut stale = false;
            for (name, yaml) in &docs {
                let path = dir.join(name);
                if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                    eprintln!(
                        "crdgen: {} is stale; run `cargo run -p fast-sandbox-api --bin crdgen`",
                        path.display()
                    );
                    stale = true;
                }
            }
            if stale {
                return ExitCode::FAILURE;
            }
        }
        "" => {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("crdgen: cannot create {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            for (name, yaml) in &docs {
                let path = dir.join(name);
                if let Err(e) = std::fs::write(&path, yaml) {
                    eprintln!("crdgen: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                println!("wrote {}", path.display());
            }
        }
        "-h" | "--help" => {
            println!(
                "crdgen [--check | --stdout]\n\nWrites deploy/crds/ from the Rust types of fast-sandbox-api.\n  --check   exit 1 when the checked-in YAML is stale\n  --stdout  print the YAML instead of writing it"
            );
        }
        other => {
            eprintln!("crdgen: unknown argument {other:?}; see --help");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
