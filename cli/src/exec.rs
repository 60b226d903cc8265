//! `kubectl sandbox exec`: a command in a running sandbox through the
//! access API, in the Kubernetes streaming protocol over WebSocket
//! (`v5.channel.k8s.io`, `v4` as a fallback): stdin in, stdout and stderr
//! apart, the exit code back. Needs `get` (the apiserver's check of the
//! WebSocket upgrade) and `create` on `sandboxes/exec`.

use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::access::{self, AccessError};

/// What to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Pass stdin through.
    pub stdin: bool,
    /// Allocate a terminal (stdout and stderr are one stream then).
    pub tty: bool,
    /// Extra environment, `NAME=VALUE`.
    pub env: Vec<String>,
    /// Working directory; the sandbox's when unset.
    pub working_dir: Option<String>,
    /// Kill the command after this many seconds (exit code 124).
    pub timeout_seconds: Option<u64>,
}

/// How an exec ended, as the server's status says.
pub fn exit_code(status: &Value) -> Result<i32, AccessError> {
    if status["status"] == "Success" {
        return Ok(0);
    }
    let code = status["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["reason"] == "ExitCode")
        .and_then(|c| c["message"].as_str())
        .and_then(|m| m.parse::<i32>().ok());
    code.ok_or_else(|| {
        AccessError::Api(
            status["message"]
                .as_str()
                .unwrap_or("the exec failed without a message")
                .to_string(),
        )
    })
}

/// The longest request target (path and query) an HTTP/1 request to the
/// access server may carry: the `http` crate's URI limit, on this client
/// and on the server alike.
pub const MAX_REQUEST_TARGET_BYTES: usize = 65_534;

/// The access API path of an exec.
pub fn request_path(namespace: &str, name: &str, opts: &ExecOptions) -> String {
    let mut q: Vec<(&str, String)> = opts
        .command
        .iter()
        .map(|c| ("command", c.clone()))
        .collect();
    q.push(("stdin", opts.stdin.to_string()));
    q.push(("stdout", "true".into()));
    q.push(("stderr", (!opts.tty).to_string()));
    q.push(("tty", opts.tty.to_string()));
    for e in &opts.env {
        q.push(("env", e.clone()));
    }
    if let Some(w) = &opts.working_dir {
        q.push(("workingDir", w.clone()));
    }
    if let Some(t) = opts.timeout_seconds {
        q.push(("timeoutSeconds", t.to_string()));
    }
    access::path(namespace, name, "exec", &q)
}

/// The command, its environment and working directory travel in the
/// request's URI, which has a limit: say so, and what carries more.
fn too_long(bytes: usize) -> AccessError {
    AccessError::Usage(format!(
        "the command, --env and --workdir take {bytes} bytes encoded in the exec request's URI, past the {MAX_REQUEST_TARGET_BYTES} it can carry: pass large data on stdin (-i) or copy it in with `kubectl sandbox cp`"
    ))
}

/// The local ends of an exec.
pub struct Streams<I, O, E> {
    /// Feeds the command's stdin (when asked for).
    pub stdin: I,
    /// Takes its stdout (the terminal's output with `tty`).
    pub stdout: O,
    /// Takes its stderr.
    pub stderr: E,
    /// Terminal sizes, first and on every change (`tty`).
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
}

/// Runs `opts` in sandbox `namespace/name` with `io` as its local ends,
/// output written as it comes. Returns the exit code.
pub async fn exec<I, O, E>(
    client: kube::Client,
    namespace: &str,
    name: &str,
    opts: &ExecOptions,
    io: Streams<I, O, E>,
) -> Result<i32, AccessError>
where
    I: AsyncRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let Streams {
        stdin: mut input,
        mut stdout,
        mut stderr,
        mut resize,
    } = io;
    if opts.command.is_empty() {
        return Err(AccessError::Usage(
            "no command to run: give it after --".into(),
        ));
    }
    let path = request_path(namespace, name, opts);
    if path.len() > MAX_REQUEST_TARGET_BYTES {
        return Err(too_long(path.len()));
    }
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| AccessError::Kube(kube::Error::HttpError(e)))?;
    let conn = client.connect(req).await.map_err(access::api_error)?;
    let can_close = conn.supports_stream_close();
    let (mut sink, mut source) = conn.into_stream().split();

    // Input: stdin chunks and resizes, in tasks of their own, so output
    // never waits on them. They end with this call however it ends (an
    // error, or its future dropped): one left behind would keep the
    // connection, and with it the remote process, alive.
    let mut tasks = tokio::task::JoinSet::new();
    let (to_ws, mut from_input) = mpsc::channel::<Vec<u8>>(8);
    let feeding = opts.stdin;
    tasks.spawn({
        let to_ws = to_ws.clone();
        async move {
            if !feeding {
                return Ok(());
            }
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = input.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                let mut m = Vec::with_capacity(n + 1);
                m.push(0u8);
                m.extend_from_slice(&buf[..n]);
                if to_ws.send(m).await.is_err() {
                    return Ok(());
                }
            }
            if can_close {
                let _ = to_ws.send(vec![255, 0]).await;
            }
            Ok::<(), std::io::Error>(())
        }
        .map(drop)
    });
    if let Some(mut sizes) = resize.take() {
        let to_ws = to_ws.clone();
        tasks.spawn(async move {
            while let Some((w, h)) = sizes.recv().await {
                let mut m = vec![4u8];
                m.extend_from_slice(format!("{{\"Width\":{w},\"Height\":{h}}}").as_bytes());
                if to_ws.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(to_ws);
    tasks.spawn(async move {
        while let Some(m) = from_input.recv().await {
            if sink.send(Message::Binary(m.into())).await.is_err() {
                break;
            }
        }
    });

    let write_err = |what: &str| {
        let what = what.to_string();
        move |source| AccessError::Write { what, source }
    };
    let mut status: Option<Value> = None;
    while let Some(msg) = source.next().await {
        let data = match msg {
            Ok(Message::Binary(d)) => d,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => return Err(AccessError::Protocol(format!("the exec stream broke: {e}"))),
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        match channel {
            1 => {
                stdout
                    .write_all(payload)
                    .await
                    .map_err(write_err("stdout"))?;
                stdout.flush().await.map_err(write_err("stdout"))?;
            }
            2 => {
                stderr
                    .write_all(payload)
                    .await
                    .map_err(write_err("stderr"))?;
                stderr.flush().await.map_err(write_err("stderr"))?;
            }
            3 => {
                status = Some(serde_json::from_slice(payload).map_err(|e| {
                    AccessError::Protocol(format!("the exec status is not JSON: {e}"))
                })?);
                break;
            }
            _ => {}
        }
    }
    drop(tasks);
    match status {
        Some(s) => exit_code(&s),
        None => Err(AccessError::Protocol(
            "the exec stream ended without a status (the connection or the server went away)"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exit_codes_come_from_the_status() {
        assert_eq!(exit_code(&json!({"status": "Success"})).unwrap(), 0);
        let failed = json!({"status": "Failure", "message": "command terminated with non-zero exit code: 42",
                            "details": {"causes": [{"reason": "ExitCode", "message": "42"}]}});
        assert_eq!(exit_code(&failed).unwrap(), 42);
        let err = exit_code(&json!({"status": "Failure", "message": "cut off"})).unwrap_err();
        assert!(err.to_string().contains("cut off"));
    }

    #[test]
    fn the_query_carries_the_command_and_the_streams() {
        let opts = ExecOptions {
            command: vec!["sh".into(), "-c".into(), "echo $A".into()],
            stdin: true,
            env: vec!["A=1".into()],
            timeout_seconds: Some(9),
            ..Default::default()
        };
        let p = request_path("team", "sb", &opts);
        assert!(p.ends_with("/sandboxes/sb/exec?command=sh&command=-c&command=echo%20%24A&stdin=true&stdout=true&stderr=true&tty=false&env=A%3D1&timeoutSeconds=9"), "{p}");
    }

    #[tokio::test]
    async fn a_command_past_the_uri_limit_is_refused_before_it_is_sent() {
        // Nothing listens there: the refusal comes before any connection.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let opts = ExecOptions {
            command: vec!["echo".into(), "x".repeat(MAX_REQUEST_TARGET_BYTES)],
            ..Default::default()
        };
        let io = Streams {
            stdin: tokio::io::empty(),
            stdout: tokio::io::sink(),
            stderr: tokio::io::sink(),
            resize: None,
        };
        let err = exec(client, "team", "sb", &opts, io).await.unwrap_err();
        assert!(matches!(err, AccessError::Usage(_)), "{err:?}");
        assert!(err.to_string().contains("on stdin (-i)"), "{err}");
    }
}
