//! `POST /v1/sandboxes/{uid}/exec`: one full-duplex HTTP/2 request per exec
//! (see [`fast_sandbox_api::exec`]). The start frame is read before the
//! answer, so a refusal is a plain JSON error; then the request stream feeds
//! the process and the response streams its output and status.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fast_sandbox_api::exec::{
    Channel, EXEC_CONTENT_TYPE, ExecRequest, FrameDecoder, MAX_START_PAYLOAD, TerminalSize,
};
use fast_sandbox_server::{Body, body};
use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::invalid;
use crate::agent::Agent;
use crate::error::Error;
use crate::exec::{self, Input};

/// How long a client has to send the start frame.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the start frame, starts the exec and streams it.
pub(crate) async fn exec(
    agent: Arc<Agent>,
    uid: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let mut body = req.into_body();
    let mut decoder = FrameDecoder::new();
    let start = tokio::time::timeout(START_TIMEOUT, first_frame(&mut body, &mut decoder))
        .await
        .map_err(|_| invalid("body", format!("no start frame within {START_TIMEOUT:?}")))??;
    let exec_req: ExecRequest = serde_json::from_slice(&start).map_err(|e| {
        invalid(
            "body",
            format!("the start frame is not an ExecRequest: {e}"),
        )
    })?;
    let process = exec::start(&agent, uid, exec_req).await?;
    tokio::spawn(read_input(body, decoder, process.input));
    let frames = ReceiverStream::new(process.output).map(Ok::<Bytes, std::io::Error>);
    let mut r = Response::new(body::stream(frames));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(EXEC_CONTENT_TYPE),
    );
    Ok(r)
}

/// The payload of the first frame, which must be a start frame.
async fn first_frame(body: &mut Incoming, decoder: &mut FrameDecoder) -> Result<Bytes, Error> {
    loop {
        match decoder.next_frame() {
            Ok(Some(f)) if f.channel == Channel::Start => return Ok(f.payload),
            Ok(Some(f)) => {
                return Err(invalid(
                    "body",
                    format!(
                        "the first frame must be on the start channel ({}), not {}",
                        Channel::Start.byte(),
                        f.channel.byte()
                    ),
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(invalid("body", e.to_string())),
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(&data);
                }
            }
            Some(Err(e)) => return Err(invalid("body", format!("reading the body failed: {e}"))),
            None => {
                return Err(invalid(
                    "body",
                    format!(
                        "the body ended before a complete start frame (at most {MAX_START_PAYLOAD} bytes)"
                    ),
                ));
            }
        }
    }
}

/// Turns the rest of the request stream into input until it ends or the
/// exec does. A stream that ends normally closes stdin; one that breaks is
/// a disconnect.
async fn read_input(mut body: Incoming, mut decoder: FrameDecoder, input: mpsc::Sender<Input>) {
    loop {
        loop {
            let msg = match decoder.next_frame() {
                Ok(Some(f)) => match f.channel {
                    Channel::Stdin => Input::Stdin(f.payload),
                    Channel::Close if f.payload.first() == Some(&Channel::Stdin.byte()) => {
                        Input::CloseStdin
                    }
                    Channel::Resize => match serde_json::from_slice::<TerminalSize>(&f.payload) {
                        Ok(size) => Input::Resize(size),
                        Err(e) => {
                            tracing::debug!(error = %e, "ignoring a bad resize frame");
                            continue;
                        }
                    },
                    other => {
                        tracing::debug!(
                            channel = other.byte(),
                            "ignoring a frame clients do not send"
                        );
                        continue;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "malformed exec input; treating as a disconnect");
                    let _ = input.send(Input::Disconnected).await;
                    return;
                }
            };
            if input.send(msg).await.is_err() {
                return;
            }
        }
        let frame = tokio::select! {
            f = body.frame() => f,
            () = input.closed() => return,
        };
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(&data);
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "exec request stream broke");
                let _ = input.send(Input::Disconnected).await;
                return;
            }
            None => {
                let msg = match decoder.finish() {
                    Ok(()) => Input::CloseStdin,
                    Err(_) => Input::Disconnected,
                };
                let _ = input.send(msg).await;
                return;
            }
        }
    }
}
