//! `sandboxes/{name}/files?path=P&op=...`: the agent's files API passed
//! through under RBAC (see `fast_sandbox_api::files` for the operations):
//! each method needs the verb the apiserver itself authorised before it
//! proxied the request (`GET` read, stat, list, tar: `get`; `PUT` write and
//! untar: `update`; `POST` mkdir: `create`; `DELETE`: `delete` on
//! `sandboxes/files`), so one RBAC rule means the same at both gates.
//! Bodies stream both ways; the agent bounds uploads, and an upload whose
//! client stops sending is abandoned after [`UPLOAD_IDLE`].

use fast_sandbox_agent_client::ClientError;
use fast_sandbox_api::agent::ErrorCode;
use std::time::Duration;

use fast_sandbox_server::body::Body;
use fast_sandbox_server::idle_timeout::IdleTimeout;
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::logs::agent_error;
use crate::resolve::Resolved;
use crate::status::GatewayError;

/// How long an upload may go without a byte from its client before it is
/// abandoned (nothing is written: the agent keeps a partial file nowhere).
pub const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// The RBAC verb a files request needs: the apiserver's for the method.
pub fn verb(method: &Method) -> Result<&'static str, GatewayError> {
    match *method {
        Method::GET => Ok("get"),
        Method::PUT => Ok("update"),
        Method::POST => Ok("create"),
        Method::DELETE => Ok("delete"),
        ref m => Err(GatewayError::BadRequest(format!(
            "method {m} is not supported on sandboxes/files (GET, PUT, POST, DELETE)"
        ))),
    }
}

/// Passes the request to the sandbox's agent and its answer back.
pub async fn serve(r: &Resolved, req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or_default().to_string();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = IdleTimeout::new(
        req.into_body().map_err(std::io::Error::other).boxed(),
        UPLOAD_IDLE,
    )
    .boxed();
    let answer = r
        .agent
        .files(method, &query, &r.uid, content_type.as_deref(), body)
        .await;
    let resp = match answer {
        Ok(resp) => resp,
        // What only files answer; the rest as every agent call.
        Err(ClientError::Api { status, error }) => {
            return Err(match (status.as_u16(), error.code) {
                (400, _) => GatewayError::BadRequest(error.message),
                (403, _) => GatewayError::Forbidden(error.message),
                (404, _) => GatewayError::PathNotFound(error.message),
                (409, ErrorCode::AlreadyExists) => GatewayError::FileExists(error.message),
                (409, ErrorCode::DirectoryNotEmpty) => GatewayError::FileConflict(error.message),
                (413, _) => GatewayError::TooLarge(error.message),
                _ => agent_error(r, ClientError::Api { status, error }),
            });
        }
        Err(e) => return Err(agent_error(r, e)),
    };
    let (parts, incoming) = resp.into_parts();
    let mut out = Response::new(incoming.map_err(std::io::Error::other).boxed());
    *out.status_mut() = parts.status;
    for h in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        if let Some(v) = parts.headers.get(&h) {
            out.headers_mut().insert(h, v.clone());
        }
    }
    if !out.headers().contains_key(header::CONTENT_TYPE) {
        out.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_method_needs_the_apiservers_verb() {
        assert_eq!(verb(&Method::GET).unwrap(), "get");
        assert_eq!(verb(&Method::PUT).unwrap(), "update");
        assert_eq!(verb(&Method::POST).unwrap(), "create");
        assert_eq!(verb(&Method::DELETE).unwrap(), "delete");
        assert!(verb(&Method::PATCH).is_err());
    }
}
