//! What every command that goes through the access API shares: its paths
//! (`/apis/subresources.sandbox.fast.io/v1alpha1/namespaces/{ns}/sandboxes/{name}/{sub}`),
//! query encoding, and one error type that tells a missing access API, a
//! refusal (with the server's message: not found, forbidden, not running)
//! and a local failure apart.

use fast_sandbox_api::wellknown::{SUBRESOURCE_GROUP, VERSION};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
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
    /// The stream from the server broke or made no sense.
    #[error("{0}")]
    Protocol(String),
    /// Reading local input (a file, stdin) failed.
    #[error("reading {what}: {source}")]
    Read {
        /// What was read.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing the output failed (a closed pipe is one).
    #[error("writing {what}: {source}")]
    Write {
        /// What was written.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command line asks for something impossible.
    #[error("{0}")]
    Usage(String),
}

impl AccessError {
    /// A broken pipe on our own output: the reader went away (`| head`).
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, AccessError::Write { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Classifies an API error: a 404 whose message is the apiserver's own
/// "could not find the requested resource" (or a 503 of an unavailable
/// APIService) means the group is not served.
pub fn api_error(e: kube::Error) -> AccessError {
    match e {
        kube::Error::Api(s)
            if s.code == 404 && s.message.contains("could not find the requested resource") =>
        {
            AccessError::NoAccessApi(s.message)
        }
        kube::Error::Api(s) if s.code == 503 && s.message.contains("service unavailable") => {
            AccessError::NoAccessApi(s.message)
        }
        kube::Error::Api(s) if !s.message.is_empty() => AccessError::Api(s.message),
        e => AccessError::Kube(e),
    }
}

/// Percent-encodes one query component.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The path of subresource `sub` of sandbox `namespace/name`, with `query`
/// pairs (values encoded here).
pub fn path(namespace: &str, name: &str, sub: &str, query: &[(&str, String)]) -> String {
    let q: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let mut p = format!(
        "/apis/{SUBRESOURCE_GROUP}/{VERSION}/namespaces/{namespace}/sandboxes/{name}/{sub}"
    );
    if !q.is_empty() {
        p.push('?');
        p.push_str(&q.join("&"));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries() {
        assert_eq!(
            path(
                "team",
                "sb",
                "exec",
                &[("command", "echo hi&x".into()), ("stdin", "true".into())]
            ),
            "/apis/subresources.sandbox.fast.io/v1alpha1/namespaces/team/sandboxes/sb/exec?command=echo%20hi%26x&stdin=true"
        );
        assert_eq!(encode("/tmp/a b"), "/tmp/a%20b");
        assert_eq!(encode("é"), "%C3%A9");
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
            AccessError::NoAccessApi(_)
        ));
        match api_error(status(
            404,
            "sandboxes.subresources.sandbox.fast.io \"x\" not found",
        )) {
            AccessError::Api(m) => assert!(m.contains("\"x\" not found")),
            other => panic!("{other:?}"),
        }
        // A path missing inside the sandbox is the agent's answer, not a
        // missing API.
        assert!(matches!(
            api_error(status(404, "stat /tmp/x: No such file or directory")),
            AccessError::Api(_)
        ));
    }
}
