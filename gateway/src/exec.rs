//! `sandboxes/{name}/exec` over WebSocket, in the Kubernetes streaming
//! protocol (`v5.channel.k8s.io`, or `v4.channel.k8s.io` without the close
//! channel), so client libraries' exec code drives it as it drives
//! `pods/exec`: one leading byte per message names the channel (0 stdin,
//! 1 stdout, 2 stderr, 3 status as a `metav1.Status` carrying the exit
//! code, 4 resize, 255 close).
//!
//! The query is `pods/exec`'s (`command` repeated, `stdin`, `stdout`,
//! `stderr`, `tty`) plus ours (`env=K=V` repeated, `workingDir`,
//! `timeoutSeconds`, `detach`). The exec starts on the agent before the
//! upgrade is answered, so a sandbox that is not running, or a bad query,
//! is a plain HTTP error with its message. Then both directions are pumped
//! one message at a time: a client that reads slowly holds the process
//! back (HTTP/2 flow control to the agent), never the gateway's memory. A
//! client that goes away breaks the agent stream, and the agent kills the
//! process unless `detach` was asked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use fast_sandbox_agent_client::AgentClient;
use fast_sandbox_api::EnvVar;
use fast_sandbox_api::exec::{
    Channel, ExecRequest, ExecStatus, FrameDecoder, TerminalSize, encode, encode_json,
    encode_split, reason,
};
use fast_sandbox_server::body::{self, Body};
use futures::future::FusedFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::logs::agent_error;
use crate::request::{query_flag, query_value, query_values};
use crate::resolve::Resolved;
use crate::status::GatewayError;

/// The subprotocols served, preferred first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// Messages queued towards the agent before the WebSocket reader waits.
const INPUT_QUEUE: usize = 8;
/// Largest WebSocket message (and frame) taken from a client. Stdin comes
/// in chunks of at most 64 KiB (the SDK; kubectl sends less); the library's
/// default, 64 MiB buffered whole and copied once more into frames, would
/// let a few sessions take the whole gateway's memory.
const MAX_CLIENT_MESSAGE: usize = 1 << 20;
/// How long the connection waits for the client's Close after ours.
const CLOSE_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest `timeoutSeconds` accepted: the agent's bound (a week), so the
/// CLI, the SDK, this server and the agent refuse the same values.
const MAX_TIMEOUT_SECONDS: u64 = fast_sandbox_api::validation::MAX_EXEC_TIMEOUT_SECONDS;

/// The subprotocol to speak: the first of ours the client offers.
pub fn negotiate(headers: &http::HeaderMap) -> Option<&'static str> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    PROTOCOLS
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p))
}

/// The exec the query asks for.
pub fn exec_request(query: Option<&str>) -> Result<ExecRequest, GatewayError> {
    let command = query_values(query, "command");
    if command.is_empty() {
        return Err(GatewayError::BadRequest(
            "query parameter command: at least one is required (the program and its arguments, one per parameter)".into(),
        ));
    }
    let mut env = Vec::new();
    for kv in query_values(query, "env") {
        let (name, value) = kv.split_once('=').ok_or_else(|| {
            GatewayError::BadRequest(format!("query parameter env: {kv:?} is not NAME=VALUE"))
        })?;
        env.push(EnvVar {
            name: name.to_string(),
            value: value.to_string(),
        });
    }
    let timeout_seconds = match query_value(query, "timeoutSeconds") {
        None => None,
        Some(t) => Some(
            t.parse::<u64>()
                .ok()
                .filter(|t| (1..=MAX_TIMEOUT_SECONDS).contains(t))
                .ok_or_else(|| {
                    GatewayError::BadRequest(format!(
                        "query parameter timeoutSeconds: {t:?} is not a number of seconds from 1 to {MAX_TIMEOUT_SECONDS}"
                    ))
                })?,
        ),
    };
    let tty = query_flag(query, "tty")?;
    if tty && query_flag(query, "stderr")? {
        return Err(GatewayError::BadRequest(
            "query parameters tty and stderr: a terminal has one output stream; ask for stdout only".into(),
        ));
    }
    Ok(ExecRequest {
        command,
        env,
        working_dir: query_value(query, "workingDir").filter(|w| !w.is_empty()),
        tty,
        stdin: query_flag(query, "stdin")?,
        timeout_seconds,
        detach: query_flag(query, "detach")?,
        terminal_size: None,
        session: None,
    })
}

/// The `metav1.Status` sent on channel 3 for `status`, as the kubelet
/// sends it for `pods/exec` (exit code in `details.causes`).
pub fn status_message(status: &ExecStatus) -> Value {
    if status.success() {
        return json!({"metadata": {}, "status": "Success"});
    }
    let code = status
        .exit_code
        .map_or_else(|| "unknown".to_string(), |c| c.to_string());
    let message = match status.reason.as_str() {
        reason::COMMAND_NOT_FOUND | reason::START_FAILED | reason::TIMEOUT => {
            status.message.clone()
        }
        _ if !status.message.is_empty() => {
            format!(
                "command terminated with non-zero exit code: {code} ({})",
                status.message
            )
        }
        _ => format!("command terminated with non-zero exit code: {code}"),
    };
    json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": if status.exit_code.is_some() { "NonZeroExitCode" } else { "InternalError" },
        "details": {"causes": [{"reason": "ExitCode", "message": code}]},
    })
}

/// Answers the upgrade: starts the exec on the agent, then switches the
/// connection to WebSocket and pumps both ways.
pub async fn serve(
    r: &Resolved,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .ok_or_else(|| {
            GatewayError::BadRequest(
                "exec is a WebSocket upgrade (Upgrade: websocket, Sec-WebSocket-Key, Sec-WebSocket-Protocol: v5.channel.k8s.io)".into(),
            )
        })?;
    let protocol = negotiate(req.headers()).ok_or_else(|| {
        GatewayError::BadRequest(format!(
            "no supported WebSocket subprotocol offered; this server speaks {}",
            PROTOCOLS.join(", ")
        ))
    })?;
    let mut exec = exec_request(req.uri().query())?;
    let session = session_name()?;
    exec.session = Some(session.clone());
    let start =
        encode_json(Channel::Start, &exec).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    let (to_agent, rx) = mpsc::channel::<std::io::Result<Bytes>>(INPUT_QUEUE);
    let _ = to_agent.send(Ok(start)).await;
    let output = r
        .agent
        .exec(&r.uid, body::stream(ReceiverStream::new(rx)))
        .await
        .map_err(|e| agent_error(r, e))?;

    let upgrade = hyper::upgrade::on(&mut req);
    let agent = r.agent_pod.clone();
    let ender = Ender {
        agent: r.agent.clone(),
        uid: r.uid.clone(),
        session,
        asked: AtomicBool::new(false),
    };
    let v5 = protocol == PROTOCOLS[0];
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default()
                    .max_message_size(Some(MAX_CLIENT_MESSAGE))
                    .max_frame_size(Some(MAX_CLIENT_MESSAGE));
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                pump(ws, to_agent, output, v5, ender).await;
            }
            Err(e) => {
                tracing::debug!(%agent, error = %e, "exec upgrade failed; the agent's process is killed");
                let _ = to_agent.try_send(Err(std::io::Error::other("the client went away")));
                ender.end().await;
            }
        }
    });
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&key).map_err(|e| GatewayError::Internal(e.to_string()))?,
    );
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol),
    );
    Ok(resp)
}

/// Turns one client message into agent frames (none for what the agent
/// does not take).
fn client_frames(data: &[u8], v5: bool) -> Vec<Bytes> {
    let Some((&channel, payload)) = data.split_first() else {
        return Vec::new();
    };
    match channel {
        0 => encode_split(Channel::Stdin, payload),
        4 => {
            // The Kubernetes resize message is {"Width":..,"Height":..}.
            let v: Value = serde_json::from_slice(payload).unwrap_or_default();
            let size = TerminalSize {
                width: v["Width"]
                    .as_u64()
                    .or(v["width"].as_u64())
                    .unwrap_or(80)
                    .min(u16::MAX as u64) as u16,
                height: v["Height"]
                    .as_u64()
                    .or(v["height"].as_u64())
                    .unwrap_or(24)
                    .min(u16::MAX as u64) as u16,
            };
            encode_json(Channel::Resize, &size).into_iter().collect()
        }
        255 if v5 && payload.first() == Some(&0) => {
            encode(Channel::Close, &[0]).into_iter().collect()
        }
        _ => Vec::new(),
    }
}

/// Ends an exec on its agent by its session name once its client is gone.
/// Breaking the exec's own stream is not enough: when its process stops
/// reading stdin, the stream's window fills, the frame waiting for it
/// holds the stream, and the break behind that frame never reaches the
/// agent.
struct Ender {
    agent: Arc<AgentClient>,
    uid: String,
    session: String,
    /// Asked already: the client's going and the stream's end both ask.
    asked: AtomicBool,
}

impl Ender {
    async fn end(&self) {
        if self.asked.swap(true, Ordering::Relaxed) {
            return;
        }
        match self.agent.end_exec(&self.uid, &self.session).await {
            Ok(ended) => {
                tracing::debug!(uid = %self.uid, ended, "exec ended: its client went away")
            }
            Err(e) => {
                tracing::debug!(uid = %self.uid, error = %e, "ending an exec whose client went away failed")
            }
        }
    }
}

/// A fresh session name: random, so replicas of the access server never
/// name two execs of one sandbox alike.
fn session_name() -> Result<String, GatewayError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| GatewayError::Internal("no randomness for an exec session name".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn pump(
    ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    to_agent: mpsc::Sender<std::io::Result<Bytes>>,
    mut output: Incoming,
    v5: bool,
    ender: Ender,
) {
    let (mut sink, mut source) = ws.split();
    let ender = &ender;
    // Set once the exit status is passed on: the client's Close after it is
    // the end of a finished exec, not one to end.
    let status_sent = &AtomicBool::new(false);
    let inbound = async move {
        while let Some(msg) = source.next().await {
            match msg {
                Ok(Message::Binary(data)) => {
                    for frame in client_frames(&data, v5) {
                        if to_agent.send(Ok(frame)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if status_sent.load(Ordering::Relaxed) {
            return;
        }
        // The client is gone before the process ended: break the agent's
        // stream, and end the exec by name in case that break is stuck
        // behind stdin its process does not read. Either kills the process
        // unless it detached.
        let _ = to_agent.try_send(Err(std::io::Error::other("the client went away")));
        ender.end().await;
    };
    let outbound = async move {
        let mut decoder = FrameDecoder::new();
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => {
                    let msg = match f.channel {
                        Channel::Stdout | Channel::Stderr => {
                            let mut m = Vec::with_capacity(f.payload.len() + 1);
                            m.push(f.channel.byte());
                            m.extend_from_slice(&f.payload);
                            m
                        }
                        Channel::Status => {
                            let st: ExecStatus =
                                serde_json::from_slice(&f.payload).unwrap_or_else(|e| ExecStatus {
                                    reason: reason::AGENT_ERROR.into(),
                                    message: format!("unreadable exec status: {e}"),
                                    ..Default::default()
                                });
                            let mut m = vec![3u8];
                            m.extend_from_slice(
                                &serde_json::to_vec(&status_message(&st)).unwrap_or_default(),
                            );
                            status_sent.store(true, Ordering::Relaxed);
                            let _ = sink.send(Message::Binary(m.into())).await;
                            let _ = sink.close().await;
                            return true;
                        }
                        _ => continue,
                    };
                    if sink.send(Message::Binary(msg.into())).await.is_err() {
                        return false;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    send_error(
                        &mut sink,
                        &format!("the agent's exec stream is malformed: {e}"),
                    )
                    .await;
                    return false;
                }
            }
            match output.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        decoder.push(&data);
                    }
                }
                _ => {
                    send_error(
                        &mut sink,
                        "the exec was cut off before it ended: the agent restarted or its connection failed; the sandbox keeps running",
                    )
                    .await;
                    return false;
                }
            }
        }
    };
    // Output ends the exchange; input keeps feeding the agent until then
    // (or until the client goes).
    let mut inbound = std::pin::pin!(inbound.fuse());
    let mut outbound = std::pin::pin!(outbound.fuse());
    let finished = loop {
        tokio::select! {
            finished = &mut outbound => break finished,
            () = &mut inbound => {}
        }
    };
    if !finished {
        // The client is gone (or the agent's stream broke): the process
        // must not outlive it.
        ender.end().await;
    }
    // The closing handshake: our Close is sent; read until the client's own
    // arrives. A connection dropped with the client's last frames unread is
    // reset, and a reset makes the client's kernel discard what it has not
    // read yet: the exit status and our Close.
    if !inbound.is_terminated() {
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, &mut inbound).await;
    }
}

async fn send_error<S>(sink: &mut S, message: &str)
where
    S: futures::Sink<Message> + Unpin,
{
    let status =
        json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"});
    let mut m = vec![3u8];
    m.extend_from_slice(&serde_json::to_vec(&status).unwrap_or_default());
    let _ = sink.send(Message::Binary(m.into())).await;
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_pods_exec_s_plus_ours() {
        let q = Some(
            "command=sh&command=-c&command=echo%20hi&stdin=true&stdout=true&stderr=true&env=A%3D1&workingDir=%2Ftmp&timeoutSeconds=5",
        );
        let r = exec_request(q).unwrap();
        assert_eq!(r.command, ["sh", "-c", "echo hi"]);
        assert!(r.stdin && !r.tty && !r.detach);
        assert_eq!(
            r.env,
            [EnvVar {
                name: "A".into(),
                value: "1".into()
            }]
        );
        assert_eq!(r.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(r.timeout_seconds, Some(5));
        assert!(
            exec_request(Some("stdin=true")).is_err(),
            "a command is required"
        );
        assert!(exec_request(Some("command=x&timeoutSeconds=0")).is_err());
        assert!(exec_request(Some("command=x&env=nope")).is_err());
        assert!(exec_request(Some("command=x&tty=true&stderr=true")).is_err());
    }

    #[test]
    fn v5_is_preferred_and_v4_accepted() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v4.channel.k8s.io, v5.channel.k8s.io"),
        );
        assert_eq!(negotiate(&h), Some("v5.channel.k8s.io"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("channel.k8s.io, v4.channel.k8s.io"),
        );
        assert_eq!(negotiate(&h), Some("v4.channel.k8s.io"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("base64.channel.k8s.io"),
        );
        assert_eq!(negotiate(&h), None);
    }

    #[test]
    fn the_status_carries_the_exit_code_as_kubectl_reads_it() {
        let ok = ExecStatus {
            exit_code: Some(0),
            reason: reason::COMPLETED.into(),
            ..Default::default()
        };
        assert_eq!(status_message(&ok)["status"], "Success");
        let failed = ExecStatus {
            exit_code: Some(42),
            reason: reason::ERROR.into(),
            ..Default::default()
        };
        let s = status_message(&failed);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(
            s["details"]["causes"][0],
            json!({"reason": "ExitCode", "message": "42"})
        );
        let missing = ExecStatus {
            exit_code: Some(127),
            reason: reason::COMMAND_NOT_FOUND.into(),
            message: "nope: command not found".into(),
            ..Default::default()
        };
        assert_eq!(
            status_message(&missing)["message"],
            "nope: command not found"
        );
    }

    #[test]
    fn client_messages_become_agent_frames() {
        let mut d = FrameDecoder::new();
        for f in client_frames(b"\x00hello", true) {
            d.push(&f);
        }
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!((f.channel, &f.payload[..]), (Channel::Stdin, &b"hello"[..]));
        assert!(
            client_frames(b"", true).is_empty(),
            "no channel byte: nothing"
        );
        let mut resize = vec![4u8];
        resize.extend_from_slice(br#"{"Width":100,"Height":40}"#);
        for f in client_frames(&resize, true) {
            d.push(&f);
        }
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.channel, Channel::Resize);
        assert_eq!(
            serde_json::from_slice::<TerminalSize>(&f.payload).unwrap(),
            TerminalSize {
                width: 100,
                height: 40
            }
        );
        assert!(
            client_frames(&[255, 0], false).is_empty(),
            "v4 has no close channel"
        );
        assert_eq!(client_frames(&[255, 0], true).len(), 1);
    }
}
