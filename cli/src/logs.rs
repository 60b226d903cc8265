//! `kubectl sandbox logs`: a sandbox's stdout or stderr through the
//! Kubernetes API.
//!
//! The request goes to the access API (`subresources.sandbox.fast.io`, an
//! aggregated API server): the apiserver authenticates the caller, the
//! access server authorises them (`get` on `sandboxes/log` in the sandbox's
//! namespace) and streams the output from the sandbox's agent. The body is
//! copied as it arrives, so `--follow` prints lines as they are written.

use futures::AsyncReadExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::access::{self, AccessError};

/// Which output of a sandbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output.
    #[default]
    Stdout,
    /// Standard error.
    Stderr,
}

impl LogStream {
    /// The value of the `stream` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// What to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Which output.
    pub stream: LogStream,
    /// Keep reading new output until the sandbox's process exits.
    pub follow: bool,
}

/// The access API path of a sandbox's logs.
pub fn request_path(namespace: &str, name: &str, opts: LogOptions) -> String {
    access::path(
        namespace,
        name,
        "log",
        &[
            ("stream", opts.stream.as_str().to_string()),
            ("follow", opts.follow.to_string()),
        ],
    )
}

/// Writes the logs of sandbox `name` in `namespace` to `out` as they
/// arrive. With `opts.follow`, returns once the sandbox's process exited
/// and its output was written; without, once the output so far was.
pub async fn logs(
    client: kube::Client,
    namespace: &str,
    name: &str,
    opts: LogOptions,
    mut out: impl AsyncWrite + Unpin,
) -> Result<(), AccessError> {
    let req = http::Request::get(request_path(namespace, name, opts))
        .body(Vec::new())
        .map_err(|e| AccessError::Kube(kube::Error::HttpError(e)))?;
    let reader = client
        .request_stream(req)
        .await
        .map_err(access::api_error)?;
    let mut reader = std::pin::pin!(reader);
    let mut buf = vec![0u8; 64 * 1024];
    let write_err = |source| AccessError::Write {
        what: "the logs".into(),
        source,
    };
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| AccessError::Protocol(format!("the log stream broke: {e}")))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).await.map_err(write_err)?;
        out.flush().await.map_err(write_err)?;
    }
    out.flush().await.map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_the_sandbox_stream_and_follow() {
        let p = request_path(
            "team",
            "sb",
            LogOptions {
                stream: LogStream::Stderr,
                follow: true,
            },
        );
        assert_eq!(
            p,
            "/apis/subresources.sandbox.fast.io/v1alpha1/namespaces/team/sandboxes/sb/log?stream=stderr&follow=true"
        );
    }
}
