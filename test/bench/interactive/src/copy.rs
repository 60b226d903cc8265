//! File copies into and out of the sandbox and the Pod, as throughput.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use kube::Client;

use crate::Args;
use crate::setup::{POD, SANDBOX, Target};

/// The baseline of the copy table.
const KUBECTL_CP: &str = "kubectl cp (Pod)";

/// Throughput of one way of copying one size.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Copy {
    /// How: the files API, `kubectl sandbox cp` or `kubectl cp`.
    pub tool: &'static str,
    /// File size in MiB.
    pub mib: usize,
    /// Best write (local → remote), MB/s.
    pub write_mb_s: f64,
    /// Best read (remote → local), MB/s.
    pub read_mb_s: f64,
}

/// Every size, every way.
pub async fn compare(
    client: &Client,
    t: &Target,
    args: &Args,
    plugin: &Path,
) -> anyhow::Result<Vec<Copy>> {
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for &mib in &args.sizes {
        let local = dir.path().join(format!("bench-{mib}"));
        let back = dir.path().join(format!("back-{mib}"));
        let size = mib << 20;
        std::fs::write(
            &local,
            (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
        )?;
        let remote = format!("/tmp/bench-{mib}");
        let ns = t.namespace.as_str();
        let sandbox_remote = format!("{ns}/{SANDBOX}:{remote}");
        let pod_remote = format!("{ns}/{POD}:{remote}");

        let mut api = Copy::new("files API (Sandbox)", mib);
        let mut cli = Copy::new("kubectl sandbox cp", mib);
        let mut kubectl = Copy::new(KUBECTL_CP, mib);
        for _ in 0..args.copies.max(1) {
            let s = Instant::now();
            fast_sandbox_cli::files::upload(client, ns, SANDBOX, &local, &remote).await?;
            api.wrote(size, s);
            let s = Instant::now();
            fast_sandbox_cli::files::download(client, ns, SANDBOX, &remote, &back).await?;
            api.read(size, s, &back)?;

            let s = Instant::now();
            run(plugin, &["cp", path(&local)?, &sandbox_remote]).await?;
            cli.wrote(size, s);
            let s = Instant::now();
            run(plugin, &["cp", &sandbox_remote, path(&back)?]).await?;
            cli.read(size, s, &back)?;

            let s = Instant::now();
            run(&args.kubectl, &["cp", path(&local)?, &pod_remote]).await?;
            kubectl.wrote(size, s);
            let s = Instant::now();
            run(&args.kubectl, &["cp", &pod_remote, path(&back)?]).await?;
            kubectl.read(size, s, &back)?;
        }
        rows.extend([api, cli, kubectl]);
    }
    Ok(rows)
}

impl Copy {
    fn new(tool: &'static str, mib: usize) -> Self {
        Self {
            tool,
            mib,
            write_mb_s: 0.0,
            read_mb_s: 0.0,
        }
    }

    fn wrote(&mut self, size: usize, since: Instant) {
        self.write_mb_s = self.write_mb_s.max(mb_s(size, since));
    }

    /// Records a read and checks that all of it arrived.
    fn read(&mut self, size: usize, since: Instant, local: &Path) -> anyhow::Result<()> {
        let rate = mb_s(size, since);
        let got = std::fs::metadata(local)?.len();
        if got != size as u64 {
            bail!("{}: read back {got} bytes of {size}", self.tool);
        }
        std::fs::remove_file(local)?;
        self.read_mb_s = self.read_mb_s.max(rate);
        Ok(())
    }
}

fn mb_s(size: usize, since: Instant) -> f64 {
    size as f64 / since.elapsed().as_secs_f64() / 1e6
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("temporary path is not UTF-8")
}

async fn run(program: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {}: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A Markdown table of the copies, each against `kubectl cp` of its size.
pub fn table(rows: &[Copy]) -> String {
    let mut s = format!(
        "| size | how | write MB/s | read MB/s | write / {KUBECTL_CP} | read / {KUBECTL_CP} |\n|---:|---|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let base = rows.iter().find(|b| b.tool == KUBECTL_CP && b.mib == r.mib);
        let (w, rd) = base.map_or((f64::NAN, f64::NAN), |b| {
            (r.write_mb_s / b.write_mb_s, r.read_mb_s / b.read_mb_s)
        });
        s.push_str(&format!(
            "| {} MiB | {} | {:.0} | {:.0} | {w:.2}x | {rd:.2}x |\n",
            r.mib, r.tool, r.write_mb_s, r.read_mb_s
        ));
    }
    s
}
