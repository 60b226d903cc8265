//! `fast-sandbox-certs`: makes the CA and the certificates of a Fast Sandbox
//! installation, stores them in Secrets, writes the CA into the webhook
//! configurations and the access server's APIService, and optionally writes
//! everything to a directory.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use fast_sandbox_certs::ca_bundle::{
    self, API_SERVICE, POLICY_CONFIGURATION, Target, WEBHOOK_CONFIGURATION,
};
use fast_sandbox_certs::leaf::{self, DEFAULT_RENEW_WITHIN_SECS};
use fast_sandbox_certs::reconcile::{self, CA_CRT, Summary};
use fast_sandbox_certs::store::{Files, Secrets, Store, write_atomically};
use fast_sandbox_server::telemetry::{self, LogFormat};

/// Create or renew the certificates of Fast Sandbox.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Namespace of the Secrets (the system namespace).
    #[arg(
        long,
        env = "FAST_SANDBOX_NAMESPACE",
        default_value = "fast-sandbox-system"
    )]
    namespace: String,
    /// Also write every bundle to DIR/<secret-name>/<key> and the CA to
    /// DIR/ca.crt (the local test cluster gives the scheduler the CA this way).
    #[arg(long, env = "FAST_SANDBOX_CERTS_OUT_DIR")]
    out_dir: Option<PathBuf>,
    /// Do not talk to a cluster: keep the certificates in --out-dir only.
    #[arg(long, env = "FAST_SANDBOX_CERTS_FILES_ONLY", requires = "out_dir")]
    files_only: bool,
    /// MutatingWebhookConfiguration whose webhooks get the CA as caBundle
    /// (empty: none).
    #[arg(long, env = "FAST_SANDBOX_WEBHOOK_CONFIGURATION", default_value = WEBHOOK_CONFIGURATION)]
    webhook_configuration: String,
    /// ValidatingWebhookConfiguration whose webhooks get the CA (empty:
    /// none).
    #[arg(long, env = "FAST_SANDBOX_POLICY_CONFIGURATION", default_value = POLICY_CONFIGURATION)]
    policy_configuration: String,
    /// APIService of the access server that gets the CA (empty: none).
    #[arg(long, env = "FAST_SANDBOX_API_SERVICE", default_value = API_SERVICE)]
    api_service: String,
    /// How long to wait for those objects to appear (they may be applied
    /// together with the Job that runs this).
    #[arg(long, env = "FAST_SANDBOX_WEBHOOK_WAIT_SECONDS", default_value_t = 120)]
    webhook_wait_seconds: u64,
    /// Renew certificates that expire within this many days.
    #[arg(long, env = "FAST_SANDBOX_RENEW_WITHIN_DAYS", default_value_t = DEFAULT_RENEW_WITHIN_SECS / 86_400)]
    renew_within_days: i64,
    /// Log format: text or json (RUST_LOG sets the filter).
    #[arg(long, env = "FAST_SANDBOX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let specs = leaf::standard(&args.namespace);
    let renew = args.renew_within_days * 86_400;

    let client = if args.files_only {
        None
    } else {
        Some(
            kube::Client::try_default()
                .await
                .context("connecting to the cluster")?,
        )
    };
    let store: Box<dyn Store> = match (&client, &args.out_dir) {
        (Some(c), _) => Box::new(Secrets::new(c.clone(), &args.namespace)),
        (None, Some(dir)) => Box::new(Files::new(dir)),
        (None, None) => bail!("--files-only needs --out-dir"),
    };
    let summary = reconcile::ensure(store.as_ref(), &specs, now, renew)
        .await
        .context("reconciling certificates")?;

    if let (Some(dir), Some(_)) = (&args.out_dir, &client) {
        write_files(dir, &summary).await?;
    }
    if let Some(dir) = &args.out_dir {
        write_atomically(&dir.join(CA_CRT), summary.authority.cert_pem())?;
    }
    if let Some(client) = client {
        let targets = [
            Target::Mutating(args.webhook_configuration.clone()),
            Target::Validating(args.policy_configuration.clone()),
            Target::ApiService(args.api_service.clone()),
        ];
        for target in targets.iter().filter(|t| !t.name().is_empty()) {
            inject(
                client.clone(),
                target,
                summary.authority.cert_pem(),
                args.webhook_wait_seconds,
            )
            .await?;
        }
    }
    Ok(())
}

async fn write_files(dir: &std::path::Path, summary: &Summary) -> anyhow::Result<()> {
    let files = Files::new(dir);
    for b in &summary.bundles {
        files.save(&b.name, b.kind, &b.entries).await?;
    }
    Ok(())
}

async fn inject(
    client: kube::Client,
    target: &Target,
    ca_pem: &str,
    wait_seconds: u64,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_seconds);
    loop {
        match ca_bundle::inject(client.clone(), target, ca_pem).await {
            Ok(Some(changed)) => {
                tracing::info!(%target, changed, "caBundle up to date");
                return Ok(());
            }
            Ok(None) => tracing::info!(%target, "not found yet"),
            Err(e) => tracing::warn!(%target, error = %e, "injecting caBundle failed"),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{target} did not take the CA within {wait_seconds}s");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
