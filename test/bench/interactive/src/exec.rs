//! Exec round trips: each timed from the call to the exit code in hand.

use std::future::Future;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fast_sandbox_cli::exec::{ExecOptions, Streams};
use k8s_openapi::api::core::v1::Pod;
use kube::api::AttachParams;
use kube::{Api, Client};

use crate::setup::{POD, SANDBOX, Target};

/// Untimed round trips per worker before the timed ones.
const WARMUP: usize = 2;

/// Runs `runs` timed calls of `once` (after [`WARMUP`] untimed ones per
/// worker), `concurrency` at a time.
async fn series<F, Fut>(runs: usize, concurrency: usize, once: F) -> anyhow::Result<Vec<Duration>>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let workers = concurrency.max(1);
    let per_worker = runs.div_ceil(workers);
    let mut handles = Vec::new();
    for _ in 0..workers {
        let once = once.clone();
        handles.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_worker);
            for i in 0..WARMUP + per_worker {
                let t = Instant::now();
                once().await?;
                if i >= WARMUP {
                    samples.push(t.elapsed());
                }
            }
            anyhow::Ok(samples)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    all.truncate(runs);
    Ok(all)
}

/// `/bin/true` through the Sandbox `exec` subresource.
pub async fn sandbox_series(
    client: &Client,
    t: &Target,
    runs: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    let (client, ns) = (client.clone(), t.namespace.clone());
    series(runs, concurrency, move || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let opts = ExecOptions {
                command: vec!["/bin/true".into()],
                ..Default::default()
            };
            let io = Streams {
                stdin: tokio::io::empty(),
                stdout: tokio::io::sink(),
                stderr: tokio::io::sink(),
                resize: None,
            };
            let code = fast_sandbox_cli::exec::exec(client, &ns, SANDBOX, &opts, io).await?;
            if code != 0 {
                bail!("/bin/true in the sandbox exited {code}");
            }
            Ok(())
        }
    })
    .await
}

/// `/bin/true` through the Pod's `pods/exec`.
pub async fn pod_series(
    client: &Client,
    t: &Target,
    runs: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &t.namespace);
    series(runs, concurrency, move || {
        let pods = pods.clone();
        async move {
            let params = AttachParams::default()
                .stdin(false)
                .stdout(true)
                .stderr(true);
            let mut p = pods.exec(POD, ["/bin/true"], &params).await?;
            let status = p
                .take_status()
                .context("no status channel")?
                .await
                .context("the exec ended without a status")?;
            p.join().await?;
            if status.status.as_deref() != Some("Success") {
                bail!("/bin/true in the Pod failed: {status:?}");
            }
            Ok(())
        }
    })
    .await
}

/// One process per round trip (a CLI as a user runs it).
pub async fn process_series(
    command: Command,
    runs: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
    series(runs, concurrency, move || {
        let (program, args) = (program.clone(), args.clone());
        async move {
            let out = tokio::process::Command::new(&program)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .await
                .with_context(|| format!("running {}", program.to_string_lossy()))?;
            if !out.status.success() {
                bail!(
                    "{} failed: {}",
                    program.to_string_lossy(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        }
    })
    .await
}
