//! Wire format of `POST /v1/sandboxes/{uid}/exec`: one full-duplex HTTP/2
//! request per command, no upgrade and no extra connection, so a caller
//! that keeps one warm connection per agent runs execs on it too.
//!
//! Both bodies are streams of frames `[channel: u8][length: u32 BE][payload]`
//! with at most [`MAX_FRAME_PAYLOAD`] payload bytes. The channels mirror
//! Kubernetes' `v5.channel.k8s.io`, so a WebSocket proxy maps them 1:1:
//!
//! | channel | direction | payload |
//! |---|---|---|
//! | 254 start | client → agent, first frame, once | JSON [`ExecRequest`] |
//! | 0 stdin | client → agent | bytes |
//! | 255 close | client → agent | `[0]`: stdin is closed (end of input) |
//! | 4 resize | client → agent | JSON [`TerminalSize`] |
//! | 1 stdout | agent → client | bytes (the terminal's output with `tty`) |
//! | 2 stderr | agent → client | bytes (never with `tty`) |
//! | 3 status | agent → client, last frame, always | JSON [`ExecStatus`] |
//!
//! The agent answers with an [`ApiError`](crate::agent::ApiError) instead of
//! a stream when the exec cannot start at all (no such sandbox, not running,
//! a bad request). Once the answer is `200`, every outcome, a command that
//! is not found included, is an [`ExecStatus`].

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::sandbox::EnvVar;

/// Content type of both exec bodies.
pub const EXEC_CONTENT_TYPE: &str = "application/vnd.fast-sandbox.exec-frames";
/// Largest payload of one frame (64 KiB): bounds what either side buffers.
pub const MAX_FRAME_PAYLOAD: usize = 64 * 1024;
/// Bytes of a frame's header: channel and length.
pub const FRAME_HEADER_LEN: usize = 5;
/// Largest start frame payload: an [`ExecRequest`] within the limits of
/// [`crate::validation::MAX_EXEC_BYTES`] plus JSON overhead still fits.
pub const MAX_START_PAYLOAD: usize = MAX_FRAME_PAYLOAD;

/// Exit code of a command that ran out of `timeoutSeconds` (as `timeout(1)`).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code of a command that exists but cannot be executed (as a shell).
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit code of a command that is not found (as a shell).
pub const EXIT_NOT_FOUND: i32 = 127;

/// The [`ExecStatus::reason`] values.
pub mod reason {
    /// The command exited with code 0.
    pub const COMPLETED: &str = "Completed";
    /// The command exited with a non-zero code.
    pub const ERROR: &str = "Error";
    /// The command is not in the sandbox (exit code 127).
    pub const COMMAND_NOT_FOUND: &str = "CommandNotFound";
    /// The command exists but could not be started: not executable, or the
    /// working directory is missing (exit code 126).
    pub const START_FAILED: &str = "StartFailed";
    /// `timeoutSeconds` passed; the agent killed the process (exit code 124).
    pub const TIMEOUT: &str = "Timeout";
    /// The process died of SIGKILL the agent did not send for a timeout
    /// (the kernel's OOM killer, the sandbox being deleted, `kill -9`).
    pub const KILLED: &str = "Killed";
    /// The agent or containerd failed; the process's fate is unknown.
    pub const AGENT_ERROR: &str = "AgentError";
}

/// A frame's channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Client → agent: bytes for the process's standard input.
    Stdin,
    /// Agent → client: the process's standard output.
    Stdout,
    /// Agent → client: the process's standard error.
    Stderr,
    /// Agent → client: the final [`ExecStatus`].
    Status,
    /// Client → agent: a new [`TerminalSize`].
    Resize,
    /// Client → agent: the [`ExecRequest`], first frame only.
    Start,
    /// Client → agent: closes an input stream (`[0]`: stdin).
    Close,
}

impl Channel {
    /// The channel's byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            Channel::Stdin => 0,
            Channel::Stdout => 1,
            Channel::Stderr => 2,
            Channel::Status => 3,
            Channel::Resize => 4,
            Channel::Start => 254,
            Channel::Close => 255,
        }
    }

    /// The channel a byte names, if any.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Channel::Stdin,
            1 => Channel::Stdout,
            2 => Channel::Stderr,
            3 => Channel::Status,
            4 => Channel::Resize,
            254 => Channel::Start,
            255 => Channel::Close,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Its channel.
    pub channel: Channel,
    /// Its payload (at most [`MAX_FRAME_PAYLOAD`] bytes).
    pub payload: Bytes,
}

/// Why a frame stream is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The channel byte is not one of [`Channel`].
    #[error("unknown exec frame channel {0}")]
    UnknownChannel(u8),
    /// A payload longer than [`MAX_FRAME_PAYLOAD`].
    #[error(
        "exec frame on channel {channel} is {len} bytes; at most {MAX_FRAME_PAYLOAD} are allowed"
    )]
    TooLong {
        /// Channel byte.
        channel: u8,
        /// Announced length.
        len: usize,
    },
    /// The stream ended inside a frame.
    #[error("the exec stream ended inside a frame ({0} bytes of it were sent)")]
    Truncated(usize),
}

/// Encodes one frame. Payloads longer than [`MAX_FRAME_PAYLOAD`] are
/// refused; [`encode_split`] cuts data into frames.
pub fn encode(channel: Channel, payload: &[u8]) -> Result<Bytes, FrameError> {
    if payload.len() > MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLong {
            channel: channel.byte(),
            len: payload.len(),
        });
    }
    let mut out = BytesMut::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&[channel.byte()]);
    // Fits: payload.len() <= 64 KiB.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out.freeze())
}

/// Encodes `data` as as many frames on `channel` as it takes.
pub fn encode_split(channel: Channel, data: &[u8]) -> Vec<Bytes> {
    data.chunks(MAX_FRAME_PAYLOAD)
        .filter_map(|c| encode(channel, c).ok())
        .collect()
}

/// Encodes a JSON frame (start, resize, status).
pub fn encode_json<T: Serialize>(channel: Channel, value: &T) -> Result<Bytes, FrameError> {
    let json = serde_json::to_vec(value).unwrap_or_default();
    encode(channel, &json)
}

/// Decodes frames from a byte stream that arrives in chunks of any size:
/// push each chunk, then take frames until none is complete.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete frame, `None` when more bytes are needed. A
    /// malformed header is an error as soon as its five bytes are in, so a
    /// bad peer is refused before it sends the payload.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let byte = self.buf[0];
        let channel = Channel::from_byte(byte).ok_or(FrameError::UnknownChannel(byte))?;
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME_PAYLOAD {
            return Err(FrameError::TooLong { channel: byte, len });
        }
        if self.buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Frame { channel, payload }))
    }

    /// Call at the end of the stream: an error when a frame was cut short.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated(self.buf.len()))
        }
    }
}

/// Width and height of a terminal, in characters.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TerminalSize {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
}

/// What to run: the payload of the start frame.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExecRequest {
    /// argv; `command[0]` is looked up in the sandbox's `PATH`. Required.
    pub command: Vec<String>,
    /// Added to the sandbox's environment (replacing variables of the same name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Working directory; the sandbox's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Run on a terminal: one output stream (stdout), resizable.
    #[serde(default)]
    pub tty: bool,
    /// The client sends standard input; without it the process reads
    /// end-of-file at once.
    #[serde(default)]
    pub stdin: bool,
    /// Kill the process after this long (status `Timeout`, exit code 124).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Keep the process running when the client goes away; its output is
    /// then read and discarded until it exits. Without it, a client that
    /// disconnects gets its process killed.
    #[serde(default)]
    pub detach: bool,
    /// Initial terminal size (with `tty`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_size: Option<TerminalSize>,
    /// A name the client gives this exec (1 to 64 letters, digits and `-`),
    /// so that a separate `DELETE` of [`crate::agent::exec_session_path`]
    /// can end it once the client is gone: the exec's own stream may be
    /// held by flow control (stdin nobody reads) and unable to say so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// How an exec ended: the payload of the last frame.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExecStatus {
    /// Exit code; absent when the agent cannot tell (`AgentError`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// One of [`reason`].
    pub reason: String,
    /// For people: what happened.
    #[serde(default)]
    pub message: String,
    /// The signal that ended the process, when it died of one (containerd
    /// reports such deaths as exit code 128 + signal, as a shell does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

impl ExecStatus {
    /// Whether the command ran and exited with 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Result<Vec<Frame>, FrameError> {
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c);
            while let Some(f) = d.next_frame()? {
                out.push(f);
            }
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn frames_round_trip_across_every_chunk_boundary() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&encode(Channel::Start, b"{\"command\":[\"true\"]}").unwrap());
        stream.extend_from_slice(&encode(Channel::Stdin, b"hello").unwrap());
        stream.extend_from_slice(&encode(Channel::Stdin, b"").unwrap());
        stream.extend_from_slice(&encode(Channel::Close, &[0]).unwrap());
        let whole = decode_all(&[&stream]).unwrap();
        assert_eq!(
            whole.iter().map(|f| f.channel).collect::<Vec<_>>(),
            [
                Channel::Start,
                Channel::Stdin,
                Channel::Stdin,
                Channel::Close
            ]
        );
        assert_eq!(&whole[1].payload[..], b"hello");
        // Every split into two chunks, and byte by byte.
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(decode_all(&[a, b]).unwrap(), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode_all(&bytes).unwrap(), whole);
    }

    #[test]
    fn header_is_channel_then_big_endian_length() {
        let f = encode(Channel::Stderr, &[7; 300]).unwrap();
        assert_eq!(&f[..5], &[2, 0, 0, 1, 44]);
        assert_eq!(f.len(), 305);
        for (c, b) in [
            (Channel::Stdin, 0),
            (Channel::Stdout, 1),
            (Channel::Stderr, 2),
            (Channel::Status, 3),
            (Channel::Resize, 4),
            (Channel::Start, 254),
            (Channel::Close, 255),
        ] {
            assert_eq!(c.byte(), b);
            assert_eq!(Channel::from_byte(b), Some(c));
        }
        assert_eq!(Channel::from_byte(5), None);
    }

    #[test]
    fn oversized_unknown_and_truncated_frames_are_errors() {
        assert!(matches!(
            encode(Channel::Stdout, &vec![0; MAX_FRAME_PAYLOAD + 1]),
            Err(FrameError::TooLong { .. })
        ));
        assert!(encode(Channel::Stdout, &vec![0; MAX_FRAME_PAYLOAD]).is_ok());
        let mut d = FrameDecoder::new();
        d.push(&[1, 0, 1, 0, 1]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLong {
                channel: 1,
                len: MAX_FRAME_PAYLOAD + 1
            })
        );
        let mut d = FrameDecoder::new();
        d.push(&[9, 0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::UnknownChannel(9)));
        assert_eq!(
            decode_all(&[&[1, 0, 0, 0, 4, b'a']]),
            Err(FrameError::Truncated(6))
        );
    }

    #[test]
    fn split_cuts_large_output_into_full_frames() {
        let data = vec![1u8; 2 * MAX_FRAME_PAYLOAD + 10];
        let frames = encode_split(Channel::Stdout, &data);
        assert_eq!(frames.len(), 3);
        let joined: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        let decoded = decode_all(&joined).unwrap();
        assert_eq!(
            decoded.iter().map(|f| f.payload.len()).sum::<usize>(),
            data.len()
        );
    }

    #[test]
    fn json_shapes_are_camel_case() {
        let req = ExecRequest {
            command: vec!["sh".into()],
            working_dir: Some("/tmp".into()),
            tty: true,
            stdin: true,
            timeout_seconds: Some(5),
            terminal_size: Some(TerminalSize {
                width: 80,
                height: 24,
            }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"command":["sh"],"workingDir":"/tmp","tty":true,"stdin":true,"timeoutSeconds":5,"detach":false,"terminalSize":{"width":80,"height":24}}"#
        );
        let minimal: ExecRequest = serde_json::from_str(r#"{"command":["true"]}"#).unwrap();
        assert!(!minimal.tty && !minimal.stdin && !minimal.detach);
        let st = ExecStatus {
            exit_code: Some(EXIT_NOT_FOUND),
            reason: reason::COMMAND_NOT_FOUND.into(),
            message: "nope: not found".into(),
            signal: None,
        };
        assert_eq!(
            serde_json::to_string(&st).unwrap(),
            r#"{"exitCode":127,"reason":"CommandNotFound","message":"nope: not found"}"#
        );
    }
}
