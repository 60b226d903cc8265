//! The client half of `/v1/sandboxes/{uid}/files`.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::ClientError;

/// A streamed download (a file's bytes, a tar stream).
pub struct FileStream {
    body: Incoming,
}

impl FileStream {
    /// The next chunk; `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(e) => {
                    return Some(Err(ClientError::StreamBroken(format!(
                        "the download broke off: {e}"
                    ))));
                }
            }
        }
    }
}
