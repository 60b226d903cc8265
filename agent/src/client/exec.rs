//! The client half of `POST /v1/sandboxes/{uid}/exec`: a sender for stdin,
//! resizes and the end of input, and a reader of output frames ending in
//! the [`ExecStatus`]. Input is sent through a small queue, so a process
//! that does not read its stdin slows the sender down.

use bytes::Bytes;
use fast_sandbox_api::agent::{ApiError, exec_path};
use fast_sandbox_api::exec::{
    Channel, EXEC_CONTENT_TYPE, ExecRequest, ExecStatus, FrameDecoder, TerminalSize, encode,
    encode_json, encode_split,
};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{AgentClient, ClientError, decode};

/// Input frames queued before the request stream takes them.
const INPUT_QUEUE: usize = 8;

/// A running exec: its input and its output.
pub struct ExecStream {
    /// Sends stdin, resizes, the end of input.
    pub input: ExecInput,
    /// Reads stdout, stderr and the final status.
    pub output: ExecOutput,
}

/// The client → agent half. Dropping it ends the request stream normally
/// (no more input; stdin is closed); [`ExecInput::abort`] breaks it, which
/// the agent takes as the client going away.
pub struct ExecInput {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
}

impl ExecInput {
    async fn send(&self, frame: Bytes) -> Result<(), ClientError> {
        self.tx.send(Ok(frame)).await.map_err(|_| {
            ClientError::StreamBroken("the exec's request stream is closed (it ended)".into())
        })
    }

    /// Sends bytes to the process's stdin (needs `stdin: true`).
    pub async fn stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        for frame in encode_split(Channel::Stdin, data) {
            self.send(frame).await?;
        }
        Ok(())
    }

    /// Closes the process's stdin: it reads end-of-file after what was sent.
    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        let frame = encode(Channel::Close, &[Channel::Stdin.byte()]).unwrap_or_default();
        self.send(frame).await
    }

    /// Resizes the terminal (needs `tty: true`).
    pub async fn resize(&self, width: u16, height: u16) -> Result<(), ClientError> {
        let frame =
            encode_json(Channel::Resize, &TerminalSize { width, height }).unwrap_or_default();
        self.send(frame).await
    }

    /// Breaks the request stream, as a client that crashed would: the agent
    /// kills the process unless it detached.
    pub async fn abort(self) {
        let _ = self
            .tx
            .send(Err(std::io::Error::other("the client aborted the exec")))
            .await;
    }
}

/// One piece of an exec's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes of stdout (or the terminal).
    Stdout(Bytes),
    /// Bytes of stderr.
    Stderr(Bytes),
    /// How it ended; always the last event.
    Status(ExecStatus),
}

/// The agent → client half. Dropping it before the status disconnects:
/// the agent kills the process unless it detached.
pub struct ExecOutput {
    body: Incoming,
    decoder: FrameDecoder,
    done: bool,
}

/// Everything an exec printed and how it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutcome {
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
    /// Its status.
    pub status: ExecStatus,
}

impl ExecOutput {
    /// The next event; `None` after the status. A stream that ends or
    /// breaks before its status is [`ClientError::StreamBroken`].
    pub async fn next(&mut self) -> Option<Result<ExecEvent, ClientError>> {
        if self.done {
            return None;
        }
        loop {
            match self.decoder.next_frame() {
                Ok(Some(f)) => {
                    let ev = match f.channel {
                        Channel::Stdout => ExecEvent::Stdout(f.payload),
                        Channel::Stderr => ExecEvent::Stderr(f.payload),
                        Channel::Status => {
                            self.done = true;
                            match serde_json::from_slice(&f.payload) {
                                Ok(st) => ExecEvent::Status(st),
                                Err(e) => {
                                    return Some(Err(ClientError::Decode {
                                        status: StatusCode::OK,
                                        message: format!("the exec status is not JSON: {e}"),
                                    }));
                                }
                            }
                        }
                        _ => continue,
                    };
                    return Some(Ok(ev));
                }
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(ClientError::StreamBroken(format!(
                        "the exec stream is malformed: {e}"
                    ))));
                }
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(ClientError::StreamBroken(format!(
                        "the exec stream broke before its status (the agent restarted or the connection failed): {e}"
                    ))));
                }
                None => {
                    self.done = true;
                    return Some(Err(ClientError::StreamBroken(
                        "the exec stream ended before its status (the agent restarted or the connection failed)".into(),
                    )));
                }
            }
        }
    }

    /// Reads everything until the status.
    pub async fn collect(mut self) -> Result<ExecOutcome, ClientError> {
        let mut out = ExecOutcome::default();
        while let Some(ev) = self.next().await {
            match ev? {
                ExecEvent::Stdout(b) => out.stdout.extend_from_slice(&b),
                ExecEvent::Stderr(b) => out.stderr.extend_from_slice(&b),
                ExecEvent::Status(st) => {
                    out.status = st;
                    return Ok(out);
                }
            }
        }
        Err(ClientError::StreamBroken(
            "the exec stream ended before its status".into(),
        ))
    }
}

impl AgentClient {
    /// `POST /v1/sandboxes/{uid}/exec`: starts `req` and returns its
    /// streams, or the agent's refusal (no such sandbox, not running, a bad
    /// request).
    pub async fn exec(
        &self,
        uid: &str,
        req: &ExecRequest,
    ) -> Result<Result<ExecStream, ApiError>, ClientError> {
        let start = encode_json(Channel::Start, req).map_err(|e| ClientError::Decode {
            status: StatusCode::OK,
            message: e.to_string(),
        })?;
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let _ = tx.send(Ok(start)).await;
        let body = fast_sandbox_server::body::stream(ReceiverStream::new(rx));
        let resp = self
            .send_body(Method::POST, &exec_path(uid), Some(EXEC_CONTENT_TYPE), body)
            .await?;
        if resp.status() != StatusCode::OK {
            return match decode::<serde_json::Value>(resp).await? {
                (_, Err(e)) => Ok(Err(e)),
                (status, Ok(_)) => Err(ClientError::Decode {
                    status,
                    message: "the exec was answered without a stream".into(),
                }),
            };
        }
        Ok(Ok(ExecStream {
            input: ExecInput { tx },
            output: ExecOutput {
                body: resp.into_body(),
                decoder: FrameDecoder::new(),
                done: false,
            },
        }))
    }

    /// Runs `req` to its end: sends `stdin` (then closes it) and collects
    /// the output and status.
    pub async fn exec_collect(
        &self,
        uid: &str,
        req: &ExecRequest,
        stdin: Option<&[u8]>,
    ) -> Result<Result<ExecOutcome, ApiError>, ClientError> {
        let stream = match self.exec(uid, req).await? {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let ExecStream { input, output } = stream;
        let feed = async move {
            if let Some(data) = stdin {
                input.stdin(data).await?;
                input.close_stdin().await?;
            }
            drop(input);
            Ok::<(), ClientError>(())
        };
        let (fed, out) = tokio::join!(feed, output.collect());
        let out = out?;
        // The agent may end the exchange before taking all input (the
        // process exited without reading it): not an error.
        let _ = fed;
        Ok(Ok(out))
    }
}
