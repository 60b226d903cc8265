//! The local cluster's own processes (test/cluster/cluster.sh): crash them
//! with SIGKILL and start them again the way a supervisor would, or restart
//! a kubelet with image garbage collection on. Only the fault and image GC
//! tests use this; it touches only PIDs the cluster script started.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

use crate::E2eError;

/// The cluster script of this checkout.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cluster/cluster.sh")
}

async fn run(args: &[&str], timeout: Duration) -> Result<(), E2eError> {
    run_with(args, &[], timeout).await
}

async fn run_with(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Result<(), E2eError> {
    let what = format!("cluster.sh {}", args.join(" "));
    let mut cmd = Command::new(script());
    cmd.args(args).envs(env.iter().copied());
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| E2eError::Timeout(timeout, what.clone()))?
        .map_err(|e| E2eError::Command(format!("{what} did not run: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        return Err(E2eError::Command(format!(
            "{what} failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    Ok(())
}

/// SIGKILLs the named components (`containerd`, `kube-apiserver`, `etcd`,
/// ...) at once and returns when they are gone.
pub async fn kill(components: &[&str]) -> Result<(), E2eError> {
    let mut args = vec!["kill"];
    args.extend_from_slice(components);
    run(&args, Duration::from_secs(30)).await
}

/// Starts whatever is not running (`cluster.sh up`) and returns once the
/// node is Ready again.
pub async fn up() -> Result<(), E2eError> {
    run(&["up"], Duration::from_secs(300)).await
}

/// As [`up`], with the kubelets of the nodes numbered `nodes` garbage
/// collecting images as they start (`FAST_SANDBOX_IMAGE_GC_NODES`); those
/// whose configuration changes restart. `up` puts them back.
pub async fn up_with_image_gc(nodes: &[usize]) -> Result<(), E2eError> {
    let list: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    run_with(
        &["up"],
        &[("FAST_SANDBOX_IMAGE_GC_NODES", &list.join(" "))],
        Duration::from_secs(300),
    )
    .await
}

/// SIGTERMs the named components (`kubelet-2`, ...) and returns once they
/// have exited: a clean stop. [`up`] starts them again.
pub async fn stop(components: &[&str]) -> Result<(), E2eError> {
    let mut args = vec!["stop"];
    args.extend_from_slice(components);
    run(&args, Duration::from_secs(60)).await
}
