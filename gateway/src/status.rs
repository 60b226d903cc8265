//! Errors as the Kubernetes API states them: a `metav1.Status` body with
//! the HTTP code, a reason and a message that names the object, so kubectl,
//! client-go, the Python client and our plugin all show it as they show the
//! apiserver's own errors.

use fast_sandbox_api::wellknown::SUBRESOURCE_GROUP;
use fast_sandbox_server::body::{self, Body};
use http::{Response, StatusCode};
use serde_json::json;

/// Why a request to the access API was not served.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No such route.
    #[error("the server could not find the requested resource ({0})")]
    NotFound(String),
    /// The agent found no file at the path asked for (its own message).
    #[error("{0}")]
    PathNotFound(String),
    /// The caller is not the apiserver's front proxy, or named no user.
    #[error("{0}")]
    Unauthorized(String),
    /// RBAC said no.
    #[error("{0}")]
    Forbidden(String),
    /// The request is malformed (a query parameter, a body).
    #[error("{0}")]
    BadRequest(String),
    /// The Sandbox does not exist.
    #[error("sandboxes.{SUBRESOURCE_GROUP} \"{name}\" not found")]
    SandboxNotFound {
        /// Its name.
        name: String,
    },
    /// The sandbox exists but cannot serve this now (not bound, no
    /// container, finished, its agent gone).
    #[error("{0}")]
    Conflict(String),
    /// A file or directory is already at the path (the agent's message).
    #[error("{0}")]
    FileExists(String),
    /// The path's state forbids the operation, such as removing a directory
    /// that is not empty (the agent's message).
    #[error("{0}")]
    FileConflict(String),
    /// The request body is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// The sandbox runs as many of something (execs) as one may at once.
    #[error("{0}")]
    TooManyRequests(String),
    /// The agent or the apiserver could not be reached or failed.
    #[error("{0}")]
    Unavailable(String),
    /// Our own fault.
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    /// HTTP status and `Status.reason`.
    pub fn code(&self) -> (StatusCode, &'static str) {
        match self {
            GatewayError::NotFound(_)
            | GatewayError::PathNotFound(_)
            | GatewayError::SandboxNotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            GatewayError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            GatewayError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            GatewayError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            GatewayError::Conflict(_) | GatewayError::FileConflict(_) => {
                (StatusCode::CONFLICT, "Conflict")
            }
            GatewayError::FileExists(_) => (StatusCode::CONFLICT, "AlreadyExists"),
            GatewayError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
            GatewayError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
            GatewayError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            GatewayError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        }
    }

    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        self.code().1
    }

    /// The error as a `metav1.Status` response.
    pub fn response(&self) -> Response<Body> {
        let (code, reason) = self.code();
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": code.as_u16(),
        });
        // A conflict of a file names its cause, the path, so clients tell
        // it from the sandbox's own state (Conflict).
        if let GatewayError::FileExists(m) | GatewayError::FileConflict(m) = self {
            status["details"] = json!({"causes": [{"field": "path", "message": m}]});
        }
        body::json(code, &status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_kubernetes_statuses() {
        let r = GatewayError::Forbidden("no".into()).response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let e = GatewayError::SandboxNotFound { name: "x".into() };
        assert_eq!(
            e.to_string(),
            "sandboxes.subresources.sandbox.fast.io \"x\" not found"
        );
        assert_eq!(e.code().0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_sandbox_that_cannot_serve_is_told_from_a_files_conflict() {
        use http_body_util::BodyExt;
        let status = |e: GatewayError| async move {
            let body = e.response().into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        };
        let s = status(GatewayError::Conflict("finished".into())).await;
        assert_eq!((s["code"].as_u64(), s.get("details")), (Some(409), None));
        let s = status(GatewayError::FileConflict("not empty".into())).await;
        assert_eq!(
            (
                s["reason"].as_str(),
                s["details"]["causes"][0]["field"].as_str()
            ),
            (Some("Conflict"), Some("path"))
        );
        let s = status(GatewayError::FileExists("exists".into())).await;
        assert_eq!(
            (
                s["reason"].as_str(),
                s["details"]["causes"][0]["field"].as_str()
            ),
            (Some("AlreadyExists"), Some("path"))
        );
    }
}
