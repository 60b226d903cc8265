//! `kubectl-sandbox`: the kubectl plugin of Fast Sandbox. kubectl runs it
//! for `kubectl sandbox ...` when it is on `PATH`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use fast_sandbox_api::validation::MAX_TERMINATION_GRACE_SECONDS;
use fast_sandbox_cli::access::AccessError;
use fast_sandbox_cli::exec::ExecOptions;
use fast_sandbox_cli::files::Location;
use fast_sandbox_cli::sandboxes::RunOptions;
use fast_sandbox_cli::{LogOptions, LogStream, cluster, files, sandboxes, terminal};

/// Fast Sandbox commands for kubectl.
#[derive(Parser, Debug)]
#[command(name = "kubectl-sandbox", bin_name = "kubectl sandbox", version)]
#[command(arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which cluster and namespace.
#[derive(Args, Debug, Clone)]
struct Target {
    /// Namespace of the sandbox; default: the kubeconfig context's.
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// kubeconfig file; default: `KUBECONFIG`, then `~/.kube/config`.
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// kubeconfig context; default: the current context.
    #[arg(long, global = true)]
    context: Option<String>,
}

impl Target {
    async fn connect(&self) -> anyhow::Result<(kube::Client, String)> {
        let (client, ns) =
            cluster::connect(self.kubeconfig.as_deref(), self.context.as_deref()).await?;
        Ok((client, self.namespace.clone().unwrap_or(ns)))
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the stdout (or stderr) of a sandbox (needs `get` on
    /// `sandboxes/log` in group subresources.sandbox.fast.io).
    Logs(LogsArgs),
    /// Run a command in a running sandbox; its exit code is ours (needs
    /// `get` and `create` on `sandboxes/exec`).
    Exec(ExecArgs),
    /// Copy files or directories in or out of a sandbox, no tar needed in
    /// the image: `kubectl sandbox cp ./src sb:/dst`, `cp sb:/src ./dst`.
    Cp(CpArgs),
    /// Create a sandbox, wait until it is Ready, then run a command in it
    /// (or a shell with -i -t), like `kubectl run --rm -it`.
    Run(RunArgs),
    /// List sandboxes with their phase, age, agent and node.
    Ls(LsArgs),
    /// Print a shell completion script: `source <(kubectl sandbox completion bash)`.
    Completion(CompletionArgs),
}

#[derive(Args, Debug)]
struct LogsArgs {
    /// Name of the Sandbox.
    name: String,
    /// Keep printing new output until the sandbox's process exits.
    #[arg(short, long)]
    follow: bool,
    /// Print standard error instead of standard output.
    #[arg(long)]
    stderr: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
struct ExecArgs {
    /// Name of the Sandbox.
    name: String,
    /// Pass stdin to the command.
    #[arg(short = 'i', long)]
    stdin: bool,
    /// Allocate a terminal (stdout and stderr become one stream).
    #[arg(short = 't', long)]
    tty: bool,
    /// Kill the command after this many seconds (exit code 124; 1 to a week).
    #[arg(short = 'c', long = "timeout", value_name = "SECONDS", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=fast_sandbox_api::validation::MAX_EXEC_TIMEOUT_SECONDS))]
    timeout: Option<u64>,
    /// Extra environment, NAME=VALUE (repeatable).
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Working directory inside the sandbox.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
struct CpArgs {
    /// What to copy: a local path, or `[namespace/]sandbox:/path`.
    src: String,
    /// Where to: a local path, or `[namespace/]sandbox:/path`.
    dst: String,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Name of the Sandbox to create.
    name: String,
    /// Image to run (already on the pool's nodes).
    #[arg(long)]
    image: String,
    /// SandboxPool of the namespace.
    #[arg(long)]
    pool: String,
    /// Environment, NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Delete the sandbox when the command ends.
    #[arg(long)]
    rm: bool,
    /// Pass stdin to the command.
    #[arg(short = 'i', long)]
    stdin: bool,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// The sandbox's own process, which keeps it running while commands
    /// run in it.
    #[arg(long, value_delimiter = ' ', default_value = "/bin/sleep 2147483647")]
    keep_alive: Vec<String>,
    /// How long to wait until the sandbox is Ready.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
    /// Give the sandbox outbound IPv4 through its agent pod
    /// (`network.mode: Egress`); the cluster's own ranges stay out of reach.
    #[arg(long)]
    egress: bool,
    /// With --egress: an IPv4 CIDR it may reach (repeatable; all when none).
    #[arg(long, value_name = "CIDR")]
    allow: Vec<String>,
    /// With --egress: an IPv4 CIDR it may not reach (repeatable).
    #[arg(long, value_name = "CIDR")]
    deny: Vec<String>,
    /// Seconds a delete waits between SIGTERM and SIGKILL
    /// (`spec.terminationGracePeriodSeconds`; the agent's 10 when unset).
    /// The default keep-alive process ignores SIGTERM, so `--rm` ends
    /// sooner with 0.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(0..=MAX_TERMINATION_GRACE_SECONDS))]
    grace_period: Option<i64>,
    /// The command to run in it, after `--`; with -i -t and none, /bin/sh.
    #[arg(last = true)]
    command: Vec<String>,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
struct LsArgs {
    /// Sandboxes of every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
struct CompletionArgs {
    /// Shell.
    shell: clap_complete::Shell,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("unknown unit in {s}; use ms, s or m")),
    }
}

/// A finished command: its exit code.
type Exit = i32;

async fn logs(args: LogsArgs) -> anyhow::Result<Exit> {
    let (client, namespace) = args.target.connect().await?;
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
        Err(e) if e.is_broken_pipe() => Ok(0),
        r => r.map(|()| 0).map_err(Into::into),
    }
}

async fn run_exec(
    client: kube::Client,
    namespace: &str,
    name: &str,
    mut opts: ExecOptions,
) -> anyhow::Result<Exit> {
    if opts.tty && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        // As kubectl exec: a pipe or file cannot drive a terminal.
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
        opts.tty = false;
    }
    let raw = opts.tty.then(terminal::RawMode::enter).flatten();
    let resize = opts.tty.then(terminal::sizes);
    let io = fast_sandbox_cli::exec::Streams {
        stdin: tokio::io::stdin(),
        stdout: tokio::io::stdout(),
        stderr: tokio::io::stderr(),
        resize,
    };
    let code = fast_sandbox_cli::exec::exec(client, namespace, name, &opts, io).await;
    drop(raw);
    match code {
        Err(e) if e.is_broken_pipe() => Ok(0),
        r => r.map_err(Into::into),
    }
}

async fn exec(args: ExecArgs) -> anyhow::Result<Exit> {
    let (client, namespace) = args.target.connect().await?;
    let opts = ExecOptions {
        command: args.command,
        stdin: args.stdin,
        tty: args.tty,
        env: args.env,
        working_dir: args.workdir,
        timeout_seconds: args.timeout,
    };
    run_exec(client, &namespace, &args.name, opts).await
}

async fn cp(args: CpArgs) -> anyhow::Result<Exit> {
    let (client, default_ns) = args.target.connect().await?;
    match (Location::parse(&args.src)?, Location::parse(&args.dst)?) {
        (
            Location::Local(src),
            Location::Remote {
                namespace,
                sandbox,
                path,
            },
        ) => {
            let ns = namespace.unwrap_or(default_ns);
            files::upload(&client, &ns, &sandbox, &src, &path).await?;
        }
        (
            Location::Remote {
                namespace,
                sandbox,
                path,
            },
            Location::Local(dst),
        ) => {
            let ns = namespace.unwrap_or(default_ns);
            files::download(&client, &ns, &sandbox, &path, &dst).await?;
        }
        _ => {
            return Err(AccessError::Usage(
                "one side of cp must be local and the other a sandbox ([namespace/]sandbox:/path)"
                    .into(),
            )
            .into());
        }
    }
    Ok(0)
}

async fn run(args: RunArgs) -> anyhow::Result<Exit> {
    let (client, namespace) = args.target.connect().await?;
    let opts = RunOptions {
        image: args.image,
        pool: args.pool,
        env: args.env,
        keep_alive: args.keep_alive,
        timeout: args.timeout,
        egress: args.egress,
        allow: args.allow,
        deny: args.deny,
        grace_period: args.grace_period,
    };
    let started = sandboxes::create_ready(&client, &namespace, &args.name, &opts).await;
    let outcome = match started {
        Err(e) => Err(e.into()),
        Ok(_) => {
            let command = if args.command.is_empty() && (args.stdin || args.tty) {
                vec!["/bin/sh".to_string()]
            } else {
                args.command
            };
            if command.is_empty() {
                println!("sandbox/{} running", args.name);
                Ok(0)
            } else {
                let exec = ExecOptions {
                    command,
                    stdin: args.stdin,
                    tty: args.tty,
                    ..Default::default()
                };
                run_exec(client.clone(), &namespace, &args.name, exec).await
            }
        }
    };
    if args.rm {
        sandboxes::delete(&client, &namespace, &args.name).await?;
    }
    outcome
}

async fn ls(args: LsArgs) -> anyhow::Result<Exit> {
    let (client, namespace) = args.target.connect().await?;
    let scope = (!args.all_namespaces).then_some(namespace.as_str());
    let items = sandboxes::list(&client, scope).await?;
    if items.is_empty() {
        eprintln!(
            "No sandboxes found{}.",
            scope
                .map(|n| format!(" in namespace {n}"))
                .unwrap_or_default()
        );
        return Ok(0);
    }
    print!("{}", sandboxes::table(&items, args.all_namespaces));
    Ok(0)
}

fn completion(args: CompletionArgs) -> anyhow::Result<Exit> {
    let mut cmd = Cli::command();
    clap_complete::generate(
        args.shell,
        &mut cmd,
        "kubectl-sandbox",
        &mut std::io::stdout(),
    );
    Ok(0)
}

#[tokio::main]
async fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.kind() == clap::error::ErrorKind::InvalidSubcommand => {
            // An unknown command: say so, then show what there is.
            eprintln!("{e}");
            let _ = Cli::command().print_help();
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    };
    // kube's TLS uses rustls with ring; make it the process default so no
    // other provider compiled in makes building a client config ambiguous.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Logs(args) => logs(args).await,
        Command::Exec(args) => exec(args).await,
        Command::Cp(args) => cp(args).await,
        Command::Run(args) => run(args).await,
        Command::Ls(args) => ls(args).await,
        Command::Completion(args) => completion(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Every error's message already includes its cause.
            eprintln!(
                "error: {}",
                fast_sandbox_cli::terminal::printable(&e.to_string())
            );
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_parses() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "kubectl-sandbox",
            "exec",
            "sb",
            "-i",
            "-c",
            "5",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        let Command::Exec(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.command, ["sh", "-c", "exit 3"]);
        assert_eq!(a.timeout, Some(5));
        let cli = run_with(&["--rm", "-it"]).unwrap();
        let Command::Run(a) = cli.command else {
            panic!()
        };
        assert!(a.rm && a.stdin && a.tty && a.command.is_empty());
        assert_eq!(a.keep_alive, ["/bin/sleep", "2147483647"]);
        assert!(
            Cli::try_parse_from(["kubectl-sandbox", "exec", "sb"]).is_err(),
            "a command is required"
        );
    }

    #[test]
    fn run_takes_a_grace_period_the_server_accepts() {
        let run = |grace: &str| run_with(&["--grace-period", grace]);
        let Command::Run(a) = run("0").unwrap().command else {
            panic!()
        };
        assert_eq!(a.grace_period, Some(0));
        for bad in ["301", "-1", "ten"] {
            let err = run(bad).expect_err(bad).to_string();
            assert!(err.contains("--grace-period"), "{bad}: {err}");
        }
    }

    #[test]
    fn exec_takes_a_timeout_the_server_accepts() {
        let exec =
            |t: &str| Cli::try_parse_from(["kubectl-sandbox", "exec", "x", "-c", t, "--", "true"]);
        let Command::Exec(a) = exec("1").unwrap().command else {
            panic!()
        };
        assert_eq!(a.timeout, Some(1));
        for bad in ["0", "-1", "604801", "ten"] {
            let err = exec(bad).expect_err(bad).to_string();
            assert!(err.contains("--timeout"), "{bad}: {err}");
        }
    }

    /// `kubectl sandbox run x --image i --pool p` with `extra`.
    fn run_with(extra: &[&str]) -> Result<Cli, clap::Error> {
        let base = ["kubectl-sandbox", "run", "x", "--image", "i", "--pool", "p"];
        Cli::try_parse_from(base.iter().chain(extra))
    }
}
