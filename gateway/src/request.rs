//! The paths of the access API and their query parameters, parsed without
//! I/O.
//!
//! ```text
//! /apis/subresources.sandbox.fast.io/v1alpha1/namespaces/{ns}/sandboxes/{name}/{sub}
//! ```

use fast_sandbox_api::wellknown::{SUBRESOURCE_GROUP, VERSION};

use crate::status::GatewayError;

/// A subresource of the access API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    /// `log`: stdout or stderr, optionally followed.
    Log,
    /// `exec`: a command in the running sandbox, over WebSocket.
    Exec,
    /// `files`: the sandbox's root filesystem.
    Files,
}

impl Subresource {
    /// Its name in paths and RBAC.
    pub fn as_str(self) -> &'static str {
        match self {
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::Files => "files",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "log" => Some(Subresource::Log),
            "exec" => Some(Subresource::Exec),
            "files" => Some(Subresource::Files),
            _ => None,
        }
    }
}

/// A request for a subresource of one sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Namespace of the sandbox.
    pub namespace: String,
    /// Name of the sandbox.
    pub name: String,
    /// What is asked of it.
    pub subresource: Subresource,
}

/// What a path asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /apis`: the group list.
    Groups,
    /// `GET /apis/{group}`: the group.
    Group,
    /// `GET /apis/{group}/{version}`: its resources.
    Resources,
    /// A sandbox subresource.
    Sandbox(Target),
}

fn dns_label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Parses `path`.
pub fn route(path: &str) -> Result<Route, GatewayError> {
    let not_found = || GatewayError::NotFound(path.to_string());
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match parts.as_slice() {
        ["", "apis"] => Ok(Route::Groups),
        ["", "apis", g] if *g == SUBRESOURCE_GROUP => Ok(Route::Group),
        ["", "apis", g, v] if *g == SUBRESOURCE_GROUP && *v == VERSION => Ok(Route::Resources),
        ["", "apis", g, v, "namespaces", ns, "sandboxes", name, sub]
            if *g == SUBRESOURCE_GROUP && *v == VERSION =>
        {
            let subresource = Subresource::parse(sub).ok_or_else(not_found)?;
            if !dns_label_ok(ns) || !dns_label_ok(name) {
                return Err(GatewayError::BadRequest(format!(
                    "invalid namespace or name in {path}"
                )));
            }
            Ok(Route::Sandbox(Target {
                namespace: ns.to_string(),
                name: name.to_string(),
                subresource,
            }))
        }
        _ => Err(not_found()),
    }
}

/// The values of `key` in a query string, percent-decoded, in order.
pub fn query_values(query: Option<&str>, key: &str) -> Vec<String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k) == key).then(|| decode(v))
        })
        .collect()
}

/// The last value of `key`.
pub fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    query_values(query, key).pop()
}

/// Whether a boolean query parameter is set (`true`, `1`, or present
/// without a value).
pub fn query_flag(query: Option<&str>, key: &str) -> Result<bool, GatewayError> {
    match query_value(query, key).as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(GatewayError::BadRequest(format!(
            "query parameter {key}: {other:?} is not a boolean"
        ))),
    }
}

/// Percent-decoding of a query component (`+` is a space).
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route() {
        assert_eq!(route("/apis").unwrap(), Route::Groups);
        assert_eq!(
            route("/apis/subresources.sandbox.fast.io").unwrap(),
            Route::Group
        );
        assert_eq!(
            route("/apis/subresources.sandbox.fast.io/v1alpha1/").unwrap(),
            Route::Resources
        );
        assert_eq!(
            route("/apis/subresources.sandbox.fast.io/v1alpha1/namespaces/team/sandboxes/sb/log")
                .unwrap(),
            Route::Sandbox(Target {
                namespace: "team".into(),
                name: "sb".into(),
                subresource: Subresource::Log
            })
        );
        for bad in [
            "/apis/other.io/v1",
            "/apis/subresources.sandbox.fast.io/v2",
            "/apis/subresources.sandbox.fast.io/v1alpha1/namespaces/team/sandboxes/sb/nope",
            "/api/v1/pods",
        ] {
            assert!(
                matches!(route(bad), Err(GatewayError::NotFound(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            route("/apis/subresources.sandbox.fast.io/v1alpha1/namespaces/Team/sandboxes/sb/log"),
            Err(GatewayError::BadRequest(_))
        ));
    }

    #[test]
    fn queries_decode() {
        let q = Some("command=sh&command=-c&command=echo%20hi+there&follow=true&bad=maybe");
        assert_eq!(query_values(q, "command"), ["sh", "-c", "echo hi there"]);
        assert!(query_flag(q, "follow").unwrap());
        assert!(!query_flag(q, "absent").unwrap());
        assert!(query_flag(q, "bad").is_err());
        assert_eq!(decode("%zz%4"), "%zz%4");
    }
}
