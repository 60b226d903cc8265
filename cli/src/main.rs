//! `kubectl-sandbox`: the kubectl plugin of Fast Sandbox. kubectl runs it
//! for `kubectl sandbox ...` when it is on `PATH`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use fast_sandbox_cli::{LogOptions, LogStream, LogsError, cluster};

/// Fast Sandbox commands for kubectl.
#[derive(Parser, Debug)]
#[command(name = "kubectl-sandbox", bin_name = "kubectl sandbox", version)]
#[command(arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the stdout (or stderr) of a sandbox, through the Kubernetes
    /// API (needs `get` on `sandboxes/log` in group
    /// subresources.sandbox.fast.io).
    Logs(LogsArgs),
}

#[derive(Args, Debug)]
struct LogsArgs {
    /// Name of the Sandbox.
    name: String,
    /// Namespace of the Sandbox; default: the kubeconfig context's.
    #[arg(short, long)]
    namespace: Option<String>,
    /// Keep printing new output until the sandbox's process exits.
    #[arg(short, long)]
    follow: bool,
    /// Print standard error instead of standard output.
    #[arg(long)]
    stderr: bool,
    /// kubeconfig file; default: `KUBECONFIG`, then `~/.kube/config`.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// kubeconfig context; default: the current context.
    #[arg(long)]
    context: Option<String>,
}

async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let (client, default_namespace) =
        cluster::connect(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let namespace = args.namespace.unwrap_or(default_namespace);
    let opts = LogOptions {
        stream: if args.stderr {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        },
        follow: args.follow,
    };
    match fast_sandbox_cli::logs(client, &namespace, &args.name, opts, tokio::io::stdout()).await {
        // The reader went away (`| head`): nothing left to do.
        Err(LogsError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

#[tokio::main]
async fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.kind() == clap::error::ErrorKind::InvalidSubcommand => {
            // An unknown command: say so, then show what there is.
            eprintln!("{e}");
            let _ = <Cli as clap::CommandFactory>::command().print_help();
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    };
    // kube's TLS uses rustls with ring; make it the process default so no
    // other provider compiled in makes building a client config ambiguous.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Logs(args) => logs(args).await,
    };
    if let Err(e) = result {
        // Every error's message already includes its cause.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
