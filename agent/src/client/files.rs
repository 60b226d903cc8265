//! The client half of `/v1/sandboxes/{uid}/files`: stat, list, mkdir and
//! remove answer JSON; reads and tar streams come back as [`FileStream`];
//! writes and tar extraction take bytes or any stream of chunks.

use bytes::Bytes;
use fast_sandbox_api::agent::ApiError;
use fast_sandbox_api::files::{FileInfo, FileList, FileOp, TAR_CONTENT_TYPE, files_path};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{AgentClient, ClientError, RequestBody, decode};

/// A streamed download (a file's bytes, a tar stream).
pub struct FileStream {
    body: Incoming,
}

impl FileStream {
    /// The next chunk; `None` at the end. A stream the agent broke off
    /// (the file could not be read further) is
    /// [`ClientError::StreamBroken`].
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

    /// Reads the whole stream.
    pub async fn bytes(mut self) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }
}

impl AgentClient {
    async fn download(
        &self,
        uid: &str,
        path: &str,
        op: FileOp,
    ) -> Result<Result<FileStream, ApiError>, ClientError> {
        let resp = self
            .send(Method::GET, &files_path(uid, path, Some(op), &[]), None)
            .await?;
        if resp.status() == StatusCode::OK {
            return Ok(Ok(FileStream {
                body: resp.into_body(),
            }));
        }
        match decode::<serde_json::Value>(resp).await? {
            (_, Err(e)) => Ok(Err(e)),
            (status, Ok(_)) => Err(ClientError::Decode {
                status,
                message: "a download was answered with JSON".into(),
            }),
        }
    }

    /// `GET …/files?path=P`: the file's bytes as a stream.
    pub async fn read_file(
        &self,
        uid: &str,
        path: &str,
    ) -> Result<Result<FileStream, ApiError>, ClientError> {
        self.download(uid, path, FileOp::Read).await
    }

    /// `GET …/files?path=P&op=tar`: a tar stream of the tree at P.
    pub async fn tar(
        &self,
        uid: &str,
        path: &str,
    ) -> Result<Result<FileStream, ApiError>, ClientError> {
        self.download(uid, path, FileOp::Tar).await
    }

    /// `GET …/files?path=P&op=stat`.
    pub async fn stat(
        &self,
        uid: &str,
        path: &str,
    ) -> Result<Result<FileInfo, ApiError>, ClientError> {
        let p = files_path(uid, path, Some(FileOp::Stat), &[]);
        Ok(self.call(Method::GET, &p, None).await?.1)
    }

    /// `GET …/files?path=P&op=list`.
    pub async fn list_dir(
        &self,
        uid: &str,
        path: &str,
    ) -> Result<Result<FileList, ApiError>, ClientError> {
        let p = files_path(uid, path, Some(FileOp::List), &[]);
        Ok(self.call(Method::GET, &p, None).await?.1)
    }

    /// `PUT …/files?path=P&mode=M` with `body` (bytes, or a stream of
    /// chunks): creates or replaces the file.
    pub async fn write_file(
        &self,
        uid: &str,
        path: &str,
        mode: Option<u32>,
        body: RequestBody,
    ) -> Result<Result<FileInfo, ApiError>, ClientError> {
        let mode = mode.map(|m| format!("{m:04o}"));
        let extra: Vec<(&str, &str)> = mode.iter().map(|m| ("mode", m.as_str())).collect();
        let p = files_path(uid, path, Some(FileOp::Write), &extra);
        Ok(self
            .call_body(Method::PUT, &p, Some("application/octet-stream"), body)
            .await?
            .1)
    }

    /// `PUT …/files?path=P&op=untar` with a tar stream: extracts it into
    /// directory P.
    pub async fn untar(
        &self,
        uid: &str,
        path: &str,
        body: RequestBody,
    ) -> Result<Result<FileInfo, ApiError>, ClientError> {
        let p = files_path(uid, path, Some(FileOp::Untar), &[]);
        Ok(self
            .call_body(Method::PUT, &p, Some(TAR_CONTENT_TYPE), body)
            .await?
            .1)
    }

    /// `POST …/files?path=P&op=mkdir&mode=M`: `mkdir -p`.
    pub async fn mkdir(
        &self,
        uid: &str,
        path: &str,
        mode: Option<u32>,
    ) -> Result<Result<FileInfo, ApiError>, ClientError> {
        let mode = mode.map(|m| format!("{m:04o}"));
        let extra: Vec<(&str, &str)> = mode.iter().map(|m| ("mode", m.as_str())).collect();
        let p = files_path(uid, path, Some(FileOp::Mkdir), &extra);
        Ok(self.call(Method::POST, &p, None).await?.1)
    }

    /// `DELETE …/files?path=P&recursive=R`.
    pub async fn remove(
        &self,
        uid: &str,
        path: &str,
        recursive: bool,
    ) -> Result<Result<FileInfo, ApiError>, ClientError> {
        let r = if recursive { "true" } else { "false" };
        let p = files_path(uid, path, None, &[("recursive", r)]);
        Ok(self.call(Method::DELETE, &p, None).await?.1)
    }
}
