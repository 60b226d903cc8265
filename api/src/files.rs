//! Wire types of `/v1/sandboxes/{uid}/files`: files inside a running
//! sandbox, reached by the agent without any tool in the image.
//!
//! | method | query | body | answer |
//! |---|---|---|---|
//! | GET | `path=P` (`op=read`) | | the file's bytes, `application/octet-stream` |
//! | GET | `path=P&op=stat` | | [`FileInfo`] of P itself (a symlink is not followed) |
//! | GET | `path=P&op=list` | | [`FileList`] of directory P, sorted by name |
//! | GET | `path=P&op=tar` | | `application/x-tar` of P's tree, entries under P's base name |
//! | PUT | `path=P` (`op=write`) `[&mode=0644]` | the bytes | 200 [`FileInfo`]: P created or replaced |
//! | PUT | `path=P&op=untar` | a tar stream | 200 [`FileInfo`] of P: the archive extracted into directory P |
//! | POST | `path=P&op=mkdir` `[&mode=0755]` | | 200 [`FileInfo`]: P and missing parents created |
//! | DELETE | `path=P` `[&recursive=true]` | | 200 [`FileInfo`] of what was removed |
//!
//! `path` is percent-encoded ([`files_path`] builds the query) and absolute
//! inside the sandbox; `..` components are refused. The agent resolves it
//! against the sandbox's root with the kernel confining every step
//! (`openat2` with `RESOLVE_IN_ROOT`): a symlink, even an absolute one,
//! resolves as the sandbox sees it and never reaches the node. Uploads
//! (write, untar) are bounded by the agent's `--max-upload-bytes` (413
//! `PayloadTooLarge`). Errors name the path.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::agent::PATH_SANDBOXES;

/// Content type of a tar stream (uncompressed).
pub const TAR_CONTENT_TYPE: &str = "application/x-tar";
/// Mode of a written file when the request names none.
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// Mode of a created directory when the request names none.
pub const DEFAULT_DIR_MODE: u32 = 0o755;
/// Longest `path` accepted (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// What a files request does (`op=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOp {
    /// GET: the file's bytes.
    Read,
    /// GET: [`FileInfo`].
    Stat,
    /// GET: [`FileList`].
    List,
    /// GET: a tar stream.
    Tar,
    /// PUT: create or replace a file.
    Write,
    /// PUT: extract a tar stream.
    Untar,
    /// POST: `mkdir -p`.
    Mkdir,
}

impl FileOp {
    /// The `op` query value.
    pub fn as_str(self) -> &'static str {
        match self {
            FileOp::Read => "read",
            FileOp::Stat => "stat",
            FileOp::List => "list",
            FileOp::Tar => "tar",
            FileOp::Write => "write",
            FileOp::Untar => "untar",
            FileOp::Mkdir => "mkdir",
        }
    }

    /// Parses an `op` query value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => FileOp::Read,
            "stat" => FileOp::Stat,
            "list" => FileOp::List,
            "tar" => FileOp::Tar,
            "write" => FileOp::Write,
            "untar" => FileOp::Untar,
            "mkdir" => FileOp::Mkdir,
            _ => return None,
        })
    }
}

/// Kind of a file.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link (never followed by stat, list or tar).
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// One file as stat (lstat semantics) sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FileInfo {
    /// Base name (`/` for the root).
    pub name: String,
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Kind.
    #[serde(rename = "type")]
    pub file_type: FileType,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Last modification.
    pub modified_at: DateTime<Utc>,
    /// Target of a symlink, as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// Answer of `op=list`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct FileList {
    /// Entries of the directory, sorted by name (`.` and `..` left out).
    pub items: Vec<FileInfo>,
}

/// Path of the files resource of a sandbox.
pub fn files_resource(uid: &str) -> String {
    format!("{PATH_SANDBOXES}/{uid}/files")
}

/// The request path of a files call: `path` percent-encoded, `op` and any
/// further query parameters (values encoded too).
pub fn files_path(uid: &str, path: &str, op: Option<FileOp>, extra: &[(&str, &str)]) -> String {
    let mut q = format!("{}?path={}", files_resource(uid), percent_encode(path));
    if let Some(op) = op {
        q.push_str("&op=");
        q.push_str(op.as_str());
    }
    for (k, v) in extra {
        q.push('&');
        q.push_str(k);
        q.push('=');
        q.push_str(&percent_encode(v));
    }
    q
}

/// Percent-encodes everything but unreserved characters and `/`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a query value: `%XX` escapes, and `+` as a space (as HTML forms
/// and Go's `url.Values` encode one). `None` for a bad escape or bytes
/// that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The components of an absolute sandbox path (`/` gives none): empty and
/// `.` components are dropped; `..`, NUL, relative paths and paths longer
/// than [`MAX_PATH_BYTES`] are refused with the reason.
pub fn path_components(path: &str) -> Result<Vec<&str>, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "the path is {} bytes; at most {MAX_PATH_BYTES} are allowed",
            path.len()
        ));
    }
    if path.contains('\0') {
        return Err("the path contains NUL".into());
    }
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("{path:?} contains '..'")),
            c => parts.push(c),
        }
    }
    Ok(parts)
}

/// Parses an octal permission mode (`0644`, `755`); at most `0o7777`.
pub fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    let m = u32::from_str_radix(digits, 8).ok()?;
    (m <= 0o7777).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_through_the_query() {
        for p in ["/tmp/a b+c", "/x/ünï/%41", "/a&op=tar", "/"] {
            let q = files_path("u", p, Some(FileOp::Stat), &[("mode", "0644")]);
            let query = q.split_once('?').unwrap().1;
            let got: Vec<(&str, String)> = query
                .split('&')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k, percent_decode(v).unwrap())
                })
                .collect();
            assert_eq!(
                got,
                [
                    ("path", p.to_string()),
                    ("op", "stat".into()),
                    ("mode", "0644".into())
                ],
                "{q}"
            );
        }
        assert_eq!(percent_decode("a+b%2Bc").as_deref(), Some("a b+c"));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert!(files_path("u", "/", None, &[]).ends_with("/v1/sandboxes/u/files?path=/"));
    }

    #[test]
    fn only_absolute_paths_without_dot_dot_are_taken() {
        assert_eq!(path_components("/").unwrap(), Vec::<&str>::new());
        assert_eq!(path_components("//a/./b/").unwrap(), ["a", "b"]);
        assert!(path_components("a/b").is_err());
        assert!(path_components("/a/../../etc").unwrap_err().contains(".."));
        assert!(path_components("/a\0b").is_err());
        assert!(path_components(&format!("/{}", "a".repeat(MAX_PATH_BYTES))).is_err());
        assert_eq!(path_components("/a/..b/c..").unwrap(), ["a", "..b", "c.."]);
    }

    #[test]
    fn modes_are_octal_permission_bits() {
        assert_eq!(parse_mode("0644"), Some(0o644));
        assert_eq!(parse_mode("755"), Some(0o755));
        assert_eq!(parse_mode("4755"), Some(0o4755));
        assert_eq!(parse_mode("0o600"), Some(0o600));
        assert_eq!(parse_mode("0888"), None);
        assert_eq!(parse_mode("17777"), None);
        assert_eq!(parse_mode(""), None);
    }

    #[test]
    fn file_info_uses_type_and_camel_case() {
        let info = FileInfo {
            name: "l".into(),
            path: "/tmp/l".into(),
            file_type: FileType::Symlink,
            size: 4,
            mode: 0o777,
            modified_at: DateTime::from_timestamp(0, 0).unwrap(),
            link_target: Some("/etc".into()),
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"name":"l","path":"/tmp/l","type":"symlink","size":4,"mode":511,"modifiedAt":"1970-01-01T00:00:00Z","linkTarget":"/etc"}"#
        );
        for op in [
            FileOp::Read,
            FileOp::Stat,
            FileOp::List,
            FileOp::Tar,
            FileOp::Write,
            FileOp::Untar,
            FileOp::Mkdir,
        ] {
            assert_eq!(FileOp::parse(op.as_str()), Some(op));
        }
    }
}
