//! `GET .../sandboxes/{name}/log?stream=stdout|stderr&follow=true`: one
//! output of a sandbox, passed through from its agent as it arrives (never
//! held whole), with `follow` until the process exits.

use fast_sandbox_agent_client::ClientError;
use fast_sandbox_server::body::Body;
use http::{HeaderValue, Response, header};
use http_body_util::BodyExt;

use crate::request::{query_flag, query_value};
use crate::resolve::Resolved;
use crate::status::GatewayError;

/// What the agent said, in the user's terms.
pub fn agent_error(r: &Resolved, e: ClientError) -> GatewayError {
    let name = r.sandbox.metadata.name.clone().unwrap_or_default();
    match &e {
        ClientError::Api { error, .. } => match error.code {
            fast_sandbox_api::agent::ErrorCode::NotFound => GatewayError::Conflict(format!(
                "sandbox {name}: its container is gone from agent {}",
                r.agent_pod
            )),
            fast_sandbox_api::agent::ErrorCode::InvalidArgument => {
                GatewayError::BadRequest(error.message.clone())
            }
            // Finished, or still being created: the sandbox's state, told
            // by its name rather than the agent's key.
            fast_sandbox_api::agent::ErrorCode::SandboxNotRunning => {
                GatewayError::Conflict(error.message.replace(&r.uid, &name))
            }
            fast_sandbox_api::agent::ErrorCode::CapacityExceeded => {
                GatewayError::TooManyRequests(format!("sandbox {name}: {}", error.message))
            }
            _ => GatewayError::Unavailable(format!("agent {}: {}", r.agent_pod, error.message)),
        },
        _ if e.is_unreachable() => GatewayError::Unavailable(format!(
            "agent {} of sandbox {name} cannot be reached: {e}",
            r.agent_pod
        )),
        _ => GatewayError::Internal(format!("agent {}: {e}", r.agent_pod)),
    }
}

/// Streams the log the query asks for.
pub async fn serve(r: &Resolved, query: Option<&str>) -> Result<Response<Body>, GatewayError> {
    let stream = match query_value(query, "stream").as_deref() {
        None | Some("stdout") => "stdout",
        Some("stderr") => "stderr",
        Some(other) => {
            return Err(GatewayError::BadRequest(format!(
                "query parameter stream: {other:?} is neither stdout nor stderr"
            )));
        }
    };
    let follow = query_flag(query, "follow")?;
    let body = r
        .agent
        .logs(&r.uid, stream, follow)
        .await
        .map_err(|e| agent_error(r, e))?;
    let mut resp = Response::new(body.map_err(std::io::Error::other).boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}
