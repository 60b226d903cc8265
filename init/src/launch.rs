//! The launch message: what the sandbox's process is, as the cold path's
//! runtime spec would have it (argv, environment, working directory,
//! rlimits), framed so that a message cut short by a dying agent is told
//! from a whole one.
//!
//! Layout, integers little-endian: the magic `FSL1`, the body length (u32),
//! then the body: argv and env as a count (u32) of length-prefixed (u32)
//! UTF-8 strings, the working directory as one such string, and the
//! rlimits as a count (u32) of (resource u32, soft u64, hard u64).

use std::io::Read;

/// First bytes of every message.
pub const MAGIC: &[u8; 4] = b"FSL1";
/// Largest body accepted: well above any argv and environment the kernel
/// would exec.
pub const MAX_BODY: usize = 16 << 20;

/// One resource limit, by its Linux resource number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    /// `RLIMIT_*` number.
    pub resource: u32,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// What the init execs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Launch {
    /// argv; the first element is looked up in the environment's `PATH`
    /// unless it holds a `/`.
    pub args: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// Limits set before the exec.
    pub rlimits: Vec<Rlimit>,
}

/// Why a message could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The stream ended before the message did: its writer went away.
    Truncated,
    /// The bytes are not a message.
    Invalid(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Truncated => f.write_str("the launch message was cut short"),
            ReadError::Invalid(why) => write!(f, "invalid launch message: {why}"),
        }
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    put_u32(out, u32::try_from(n).unwrap_or(u32::MAX));
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

impl Launch {
    /// The framed message.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for list in [&self.args, &self.env] {
            put_len(&mut body, list.len());
            list.iter().for_each(|s| put_str(&mut body, s));
        }
        put_str(&mut body, &self.cwd);
        put_len(&mut body, self.rlimits.len());
        for r in &self.rlimits {
            put_u32(&mut body, r.resource);
            body.extend_from_slice(&r.soft.to_le_bytes());
            body.extend_from_slice(&r.hard.to_le_bytes());
        }
        let mut out = Vec::with_capacity(body.len() + 8);
        out.extend_from_slice(MAGIC);
        put_len(&mut out, body.len());
        out.extend_from_slice(&body);
        out
    }

    /// Reads one message from `r`.
    pub fn read_from(r: &mut impl Read) -> Result<Self, ReadError> {
        let mut head = [0u8; 8];
        read_exact(r, &mut head)?;
        if &head[..4] != MAGIC {
            return Err(ReadError::Invalid("bad magic".into()));
        }
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if len > MAX_BODY {
            return Err(ReadError::Invalid(format!(
                "body of {len} bytes is over {MAX_BODY}"
            )));
        }
        let mut body = vec![0u8; len];
        read_exact(r, &mut body)?;
        Self::decode_body(&body).map_err(ReadError::Invalid)
    }

    fn decode_body(body: &[u8]) -> Result<Self, String> {
        let mut cur = Cursor { buf: body };
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let n = cur.u32()?;
            for _ in 0..n {
                list.push(cur.string()?);
            }
        }
        let cwd = cur.string()?;
        let n = cur.u32()?;
        let mut rlimits = Vec::new();
        for _ in 0..n {
            rlimits.push(Rlimit {
                resource: cur.u32()?,
                soft: cur.u64()?,
                hard: cur.u64()?,
            });
        }
        if !cur.buf.is_empty() {
            return Err(format!("{} bytes after the message", cur.buf.len()));
        }
        let [args, env] = lists;
        Ok(Self {
            args,
            env,
            cwd,
            rlimits,
        })
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), ReadError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ReadError::Truncated,
        _ => ReadError::Invalid(format!("reading: {e}")),
    })
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.buf.len() < n {
            return Err("a field runs past the end of the body".into());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Launch {
        Launch {
            args: vec![
                "/bin/echo".into(),
                "a b".into(),
                "héllo ✓".into(),
                "".into(),
            ],
            env: (0..2000)
                .map(|i| format!("VAR_{i}={}", "x".repeat(i % 50)))
                .collect(),
            cwd: "/work dir".into(),
            rlimits: vec![Rlimit {
                resource: 7,
                soft: 1024,
                hard: 4096,
            }],
        }
    }

    #[test]
    fn round_trips() {
        let l = sample();
        let bytes = l.encode();
        assert_eq!(Launch::read_from(&mut bytes.as_slice()), Ok(l));
        let empty = Launch::default();
        assert_eq!(Launch::read_from(&mut empty.encode().as_slice()), Ok(empty));
    }

    #[test]
    fn a_message_cut_anywhere_is_truncated() {
        let bytes = sample().encode();
        for cut in [0, 3, 8, 9, bytes.len() / 2, bytes.len() - 1] {
            assert_eq!(
                Launch::read_from(&mut &bytes[..cut]),
                Err(ReadError::Truncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn garbage_is_invalid() {
        assert!(matches!(
            Launch::read_from(&mut &b"XXXX\0\0\0\0"[..]),
            Err(ReadError::Invalid(_))
        ));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Launch::read_from(&mut huge.as_slice()),
            Err(ReadError::Invalid(_))
        ));
        // A count that promises more strings than the body holds.
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&4u32.to_le_bytes());
        bad.extend_from_slice(&9u32.to_le_bytes());
        assert!(matches!(
            Launch::read_from(&mut bad.as_slice()),
            Err(ReadError::Invalid(_))
        ));
    }
}
