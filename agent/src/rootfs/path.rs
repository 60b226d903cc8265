//! A checked path inside a sandbox: absolute, normalised, without `..`.

use fast_sandbox_api::files::path_components;

use crate::api::invalid;
use crate::error::Result;

/// A checked path inside a sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxPath {
    /// Normalised absolute form, for messages and answers.
    pub display: String,
    pub(super) parts: Vec<String>,
}

impl SandboxPath {
    /// Checks `path`: absolute, no `..`, no NUL, not too long.
    pub fn parse(path: &str) -> Result<Self> {
        let parts: Vec<String> = path_components(path)
            .map_err(|m| invalid("path", m))?
            .into_iter()
            .map(str::to_string)
            .collect();
        Ok(Self {
            display: format!("/{}", parts.join("/")),
            parts,
        })
    }

    /// Whether it names the root.
    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    /// The path relative to the root (`.` for the root).
    pub(super) fn relative(&self) -> String {
        if self.parts.is_empty() {
            ".".into()
        } else {
            self.parts.join("/")
        }
    }

    /// The parent and the final name; `None` for the root.
    pub(super) fn split(&self) -> Option<(SandboxPath, &str)> {
        let (name, parent) = self.parts.split_last()?;
        let parent = SandboxPath {
            display: format!("/{}", parent.join("/")),
            parts: parent.to_vec(),
        };
        Some((parent, name))
    }

    /// The parent; `None` for the root.
    pub fn parent(&self) -> Option<SandboxPath> {
        self.split().map(|(p, _)| p)
    }

    /// The base name (`/` for the root).
    pub fn name(&self) -> &str {
        self.parts.last().map_or("/", String::as_str)
    }

    /// The path of a child.
    pub fn child(&self, name: &str) -> SandboxPath {
        let mut parts = self.parts.clone();
        parts.push(name.to_string());
        SandboxPath {
            display: format!("/{}", parts.join("/")),
            parts,
        }
    }
}
