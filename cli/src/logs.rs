//! `kubectl sandbox logs`: a sandbox's stdout or stderr through the
//! Kubernetes API.
//!
//! The request goes to the access API (`subresources.sandbox.fast.io`, an
//! aggregated API server): the apiserver authenticates the caller, the
//! access server authorises them (`get` on `sandboxes/log` in the sandbox's
//! namespace) and streams the output from the sandbox's agent. The body is
//! copied as it arrives, so `--follow` prints lines as they are written.

use fast_sandbox_api::wellknown::{SUBRESOURCE_GROUP, VERSION};
use futures::AsyncReadExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

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

/// Why the logs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// The access API is not served in this cluster.
    #[error(
        "the cluster does not serve {SUBRESOURCE_GROUP}/{VERSION}: is Fast Sandbox's access server (fast-sandbox-gateway and its APIService) installed and available? ({0})"
    )]
    NoAccessApi(String),
    /// The API refused or failed the request; its message says why
    /// (sandbox not found, not bound yet, not allowed...).
    #[error("{0}")]
    Api(String),
    /// The request could not be made.
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// Reading the stream failed midway.
    #[error("reading the logs: {0}")]
    Read(#[source] std::io::Error),
    /// Writing the output failed (a closed pipe is one).
    #[error("writing the logs: {0}")]
    Write(#[source] std::io::Error),
}

/// The access API path of a sandbox's logs.
pub fn request_path(namespace: &str, name: &str, opts: LogOptions) -> String {
    format!(
        "/apis/{SUBRESOURCE_GROUP}/{VERSION}/namespaces/{namespace}/sandboxes/{name}/log?stream={}&follow={}",
        opts.stream.as_str(),
        opts.follow
    )
}

/// Classifies an API error: a 404 whose message is the apiserver's own
/// "could not find the requested resource" means the group is not served.
pub fn api_error(e: kube::Error) -> LogsError {
    match e {
        kube::Error::Api(s)
            if s.code == 404 && s.message.contains("could not find the requested resource") =>
        {
            LogsError::NoAccessApi(s.message)
        }
        kube::Error::Api(s) if s.code == 503 && s.message.contains("service unavailable") => {
            LogsError::NoAccessApi(s.message)
        }
        kube::Error::Api(s) if !s.message.is_empty() => LogsError::Api(s.message),
        e => LogsError::Kube(e),
    }
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
) -> Result<(), LogsError> {
    let req = http::Request::get(request_path(namespace, name, opts))
        .body(Vec::new())
        .map_err(|e| LogsError::Kube(kube::Error::HttpError(e)))?;
    let reader = client.request_stream(req).await.map_err(api_error)?;
    let mut reader = std::pin::pin!(reader);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await.map_err(LogsError::Read)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).await.map_err(LogsError::Write)?;
        out.flush().await.map_err(LogsError::Write)?;
    }
    out.flush().await.map_err(LogsError::Write)
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

    #[test]
    fn a_missing_group_is_told_apart_from_a_missing_sandbox() {
        let status = |code: u16, message: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, "NotFound")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(matches!(
            api_error(status(
                404,
                "the server could not find the requested resource"
            )),
            LogsError::NoAccessApi(_)
        ));
        match api_error(status(
            404,
            "sandboxes.subresources.sandbox.fast.io \"x\" not found",
        )) {
            LogsError::Api(m) => assert!(m.contains("\"x\" not found")),
            other => panic!("{other:?}"),
        }
    }
}
