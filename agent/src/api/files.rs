//! `/v1/sandboxes/{uid}/files?path=P[&op=…]` (see [`fast_sandbox_api::files`]):
//! request parsing and streaming over [`crate::rootfs`] and
//! [`crate::archive`], whose blocking calls run on blocking threads
//! connected to the HTTP bodies by small bounded channels, so a slow client
//! slows the disk side down and memory stays bounded.

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use fast_sandbox_api::files::{
    DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, FileList, FileOp, TAR_CONTENT_TYPE, parse_mode,
    percent_decode,
};
use fast_sandbox_server::{Body, body};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{invalid, is_true, query_param};
use crate::agent::Agent;
use crate::archive;
use crate::error::{Error, Result};
use crate::rootfs::{SandboxPath, SandboxRoot};

/// Bytes per chunk read from a file or written into a tar stream.
const CHUNK: usize = 256 * 1024;
/// Chunks queued between a blocking thread and an HTTP body.
const QUEUE: usize = 4;

/// A decoded query value.
fn query_value(query: Option<&str>, key: &str) -> Result<Option<String>> {
    match query_param(query, key) {
        None => Ok(None),
        Some(v) => percent_decode(v)
            .map(Some)
            .ok_or_else(|| invalid(key, format!("{v:?} is not a valid percent-encoded value"))),
    }
}

fn mode(query: Option<&str>, default: u32) -> Result<u32> {
    match query_value(query, "mode")? {
        None => Ok(default),
        Some(m) => parse_mode(&m).ok_or_else(|| {
            invalid(
                "mode",
                format!("{m:?} is not an octal mode of at most 7777"),
            )
        }),
    }
}

/// What a request asks for.
fn operation(method: &Method, query: Option<&str>) -> Result<(&'static str, Option<FileOp>)> {
    let op = match query_value(query, "op")? {
        None => None,
        Some(o) => {
            Some(FileOp::parse(&o).ok_or_else(|| invalid("op", format!("unknown op {o:?}")))?)
        }
    };
    let chosen = match (method, op) {
        (&Method::GET, None | Some(FileOp::Read)) => ("read", Some(FileOp::Read)),
        (&Method::GET, Some(FileOp::Stat)) => ("stat", op),
        (&Method::GET, Some(FileOp::List)) => ("list", op),
        (&Method::GET, Some(FileOp::Tar)) => ("tar", op),
        (&Method::PUT, None | Some(FileOp::Write)) => ("write", Some(FileOp::Write)),
        (&Method::PUT, Some(FileOp::Untar)) => ("untar", op),
        (&Method::POST, Some(FileOp::Mkdir)) => ("mkdir", op),
        (&Method::DELETE, None) => ("remove", None),
        (m, op) => {
            return Err(invalid(
                "op",
                format!(
                    "{m} does not serve op {}",
                    op.map_or("(none)", |o| o.as_str())
                ),
            ));
        }
    };
    Ok(chosen)
}

/// Serves one files request and counts it by op and outcome.
pub(crate) async fn files(
    agent: Arc<Agent>,
    uid: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let method = req.method().clone();
    let query = req.uri().query().map(str::to_string);
    let (name, op) = operation(&method, query.as_deref())?;
    let result = serve(agent.clone(), uid, op, query.as_deref(), req).await;
    agent
        .metrics()
        .file_op(name, result.as_ref().err().map(Error::code));
    result
}

async fn serve(
    agent: Arc<Agent>,
    uid: &str,
    op: Option<FileOp>,
    query: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let path =
        query_value(query, "path")?.ok_or_else(|| invalid("path", "is required".to_string()))?;
    let path = SandboxPath::parse(&path)?;
    let root = open_root(&agent, uid).await?;
    match op {
        Some(FileOp::Read) => read(root, path).await,
        Some(FileOp::Stat) => blocking(move || root.stat(&path)).await.map(json),
        Some(FileOp::List) => blocking(move || root.list(&path))
            .await
            .map(|items| json(FileList { items })),
        Some(FileOp::Tar) => tar(root, path).await,
        Some(FileOp::Write) => {
            let mode = mode(query, DEFAULT_FILE_MODE)?;
            let limit = agent.config().max_upload_bytes;
            write(root, path, mode, limit, req).await.map(json)
        }
        Some(FileOp::Untar) => {
            let limit = agent.config().max_upload_bytes;
            untar(root, path, limit, req).await.map(json)
        }
        Some(FileOp::Mkdir) => {
            let mode = mode(query, DEFAULT_DIR_MODE)?;
            blocking(move || root.mkdir_all(&path, mode))
                .await
                .map(json)
        }
        None => {
            let recursive = is_true(query_param(query, "recursive"));
            blocking(move || root.remove(&path, recursive))
                .await
                .map(json)
        }
    }
}

fn json<T: serde::Serialize>(value: T) -> Response<Body> {
    body::json(StatusCode::OK, &value)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io("a file operation", std::io::Error::other(e)))?
}

/// The root of sandbox `uid`, which must be running.
async fn open_root(agent: &Agent, uid: &str) -> Result<SandboxRoot> {
    let target = agent.running(uid)?;
    let proc_root = agent.config().proc_root.clone();
    let suffix = format!("/{}", target.cgroup_leaf);
    blocking(move || SandboxRoot::open(&proc_root, target.pid, &suffix)).await
}

fn stream_response(
    content_type: &'static str,
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
) -> Response<Body> {
    let mut r = Response::new(body::stream(ReceiverStream::new(rx)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Streams a regular file; errors before the first byte are answers.
async fn read(root: SandboxRoot, path: SandboxPath) -> Result<Response<Body>> {
    let mut file = blocking(move || root.open_read(&path)).await?;
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Ok(stream_response("application/octet-stream", rx))
}

/// A [`Write`] that sends what it is given as body chunks.
struct ChannelWriter(mpsc::Sender<std::io::Result<Bytes>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
            })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Streams a tar of the tree at `path`. The path is checked first, so a
/// missing one is a 404; a failure later breaks the stream.
async fn tar(root: SandboxRoot, path: SandboxPath) -> Result<Response<Body>> {
    let (root, path) = blocking(move || root.stat(&path).map(|_| (root, path))).await?;
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::with_capacity(CHUNK, ChannelWriter(tx.clone()));
        if let Err(e) = archive::write_tree(&root, &path, out) {
            tracing::debug!(path = %path.display, error = %e, "tar stream ended early");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    Ok(stream_response(TAR_CONTENT_TYPE, rx))
}

/// One piece of an upload.
enum Chunk {
    Data(Bytes),
    End,
}

/// Feeds the request body into `tx`, refusing more than `limit` bytes.
async fn feed(req: Request<Incoming>, limit: u64, tx: mpsc::Sender<Chunk>) -> Result<()> {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(Error::TooLarge { limit });
    }
    let mut body = req.into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| invalid("body", format!("reading the upload failed: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > limit {
            return Err(Error::TooLarge { limit });
        }
        if tx.send(Chunk::Data(data)).await.is_err() {
            // The writer stopped: its error is the answer.
            return Ok(());
        }
    }
    let _ = tx.send(Chunk::End).await;
    Ok(())
}

/// Runs `sink` on a blocking thread over the upload's chunks; the body's
/// error wins over the sink's (a refused upload leaves nothing behind).
async fn upload<T: Send + 'static>(
    req: Request<Incoming>,
    limit: u64,
    sink: impl FnOnce(mpsc::Receiver<Chunk>) -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::channel(QUEUE * 4);
    let worker = tokio::task::spawn_blocking(move || sink(rx));
    let fed = feed(req, limit, tx).await;
    let done = worker
        .await
        .map_err(|e| Error::io("an upload", std::io::Error::other(e)))?;
    fed?;
    done
}

/// Writes the body to `path` (created or replaced).
async fn write(
    root: SandboxRoot,
    path: SandboxPath,
    mode: u32,
    limit: u64,
    req: Request<Incoming>,
) -> Result<fast_sandbox_api::files::FileInfo> {
    let mut target = blocking(move || root.create(&path, mode)).await?;
    upload(req, limit, move |mut rx| {
        while let Some(chunk) = rx.blocking_recv() {
            match chunk {
                Chunk::Data(b) => target.write(&b)?,
                Chunk::End => return target.commit(),
            }
        }
        // The upload broke off or was refused: the partial file goes.
        Err(invalid("body", "the upload ended early".to_string()))
    })
    .await
}

/// A [`Read`] over an upload's chunks.
struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    cur: Bytes,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(b)) => self.cur = b,
                Some(Chunk::End) => self.ended = true,
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the upload ended early",
                    ));
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// Extracts the body (a tar stream) into directory `path`.
async fn untar(
    root: SandboxRoot,
    path: SandboxPath,
    limit: u64,
    req: Request<Incoming>,
) -> Result<fast_sandbox_api::files::FileInfo> {
    upload(req, limit, move |rx| {
        let reader = ChannelReader {
            rx,
            cur: Bytes::new(),
            ended: false,
        };
        archive::extract(&root, &path, reader)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_ops_pair_up() {
        let op = |m: Method, q: &str| operation(&m, Some(q)).map(|(n, _)| n);
        assert_eq!(op(Method::GET, "path=/x").unwrap(), "read");
        assert_eq!(op(Method::GET, "path=/x&op=tar").unwrap(), "tar");
        assert_eq!(op(Method::PUT, "path=/x").unwrap(), "write");
        assert_eq!(op(Method::PUT, "op=untar").unwrap(), "untar");
        assert_eq!(op(Method::POST, "op=mkdir").unwrap(), "mkdir");
        assert_eq!(op(Method::DELETE, "path=/x").unwrap(), "remove");
        assert!(op(Method::POST, "path=/x").is_err());
        assert!(op(Method::GET, "op=mkdir").is_err());
        assert!(op(Method::GET, "op=nope").is_err());
        assert_eq!(mode(Some("mode=0600"), 0o644).unwrap(), 0o600);
        assert_eq!(mode(None, 0o644).unwrap(), 0o644);
        assert!(mode(Some("mode=999"), 0o644).is_err());
        assert_eq!(
            query_value(Some("path=%2Ftmp%2Fa+b"), "path")
                .unwrap()
                .as_deref(),
            Some("/tmp/a b")
        );
    }
}
