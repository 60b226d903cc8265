//! Image reference normalisation, so that `busybox`,
//! `library/busybox:latest` and `docker.io/library/busybox:latest` name one
//! image everywhere: in the placement index, the extender and the agent.

use std::fmt;

/// Registry assumed when a reference names none.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// Tag assumed when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host (with port), e.g. `docker.io`.
    pub domain: String,
    /// Repository path, e.g. `library/busybox`.
    pub path: String,
    /// Tag, when the reference has one (or none and no digest: `latest`).
    pub tag: Option<String>,
    /// Digest such as `sha256:…`, when pinned.
    pub digest: Option<String>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    /// The reference is empty.
    #[error("image reference is empty")]
    Empty,
    /// The reference has characters no registry accepts.
    #[error("image reference {0:?} has an invalid character {1:?}")]
    InvalidChar(String, char),
    /// The repository part has upper-case letters.
    #[error("image reference {0:?}: repository must be lower case")]
    UpperCase(String),
    /// Malformed tag or digest.
    #[error("image reference {0:?}: {1}")]
    Malformed(String, &'static str),
}

impl ImageRef {
    /// Parses and normalises a reference the way Docker and containerd do.
    pub fn parse(input: &str) -> Result<Self, ImageRefError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ImageRefError::Empty);
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._-/:@".contains(*c)))
        {
            return Err(ImageRefError::InvalidChar(input.to_string(), c));
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => {
                let valid = d
                    .split_once(':')
                    .is_some_and(|(alg, hex)| !alg.is_empty() && hex.len() >= 32);
                if !valid {
                    return Err(ImageRefError::Malformed(
                        input.into(),
                        "digest must look like sha256:<hex>",
                    ));
                }
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is a ':' after the last '/'.
        let last_slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (repo, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &name[last_slash + i + 1..];
                if tag.is_empty() || tag.len() > 128 {
                    return Err(ImageRefError::Malformed(
                        input.into(),
                        "tag must have 1 to 128 characters",
                    ));
                }
                (&name[..last_slash + i], Some(tag.to_string()))
            }
            None => (name, None),
        };
        if repo.is_empty() || repo.starts_with('/') || repo.ends_with('/') || repo.contains("//") {
            return Err(ImageRefError::Malformed(
                input.into(),
                "repository path is empty or has an empty component",
            ));
        }
        let (domain, path) = match repo.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), repo.to_string()),
        };
        let domain = if domain == "index.docker.io" {
            DEFAULT_DOMAIN.to_string()
        } else {
            domain
        };
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ImageRefError::UpperCase(input.to_string()));
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            _ => tag,
        };
        Ok(ImageRef {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// The repository without tag or digest, e.g. `docker.io/library/busybox`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The normalised form of a reference, or the trimmed input when it does not
/// parse (so a cache key never panics on odd names reported by a runtime).
pub fn normalize(reference: &str) -> String {
    ImageRef::parse(reference)
        .map(|r| r.to_string())
        .unwrap_or_else(|_| reference.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_normalise_to_docker_hub_library() {
        for s in [
            "busybox",
            "busybox:latest",
            "library/busybox",
            "docker.io/busybox",
            "docker.io/library/busybox:latest",
            "index.docker.io/library/busybox",
        ] {
            assert_eq!(normalize(s), "docker.io/library/busybox:latest", "{s}");
        }
    }

    #[test]
    fn registries_ports_and_digests_are_kept() {
        assert_eq!(
            normalize("fast-sandbox/agent:dev"),
            "docker.io/fast-sandbox/agent:dev"
        );
        assert_eq!(normalize("localhost:5000/a/b"), "localhost:5000/a/b:latest");
        assert_eq!(normalize("ghcr.io/x/y:1.2"), "ghcr.io/x/y:1.2");
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            normalize(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            ImageRef::parse("busybox:1@sha256:0123456789abcdef0123456789abcdef")
                .unwrap()
                .tag
                .as_deref(),
            Some("1")
        );
    }

    #[test]
    fn bad_references_are_rejected() {
        assert_eq!(ImageRef::parse(""), Err(ImageRefError::Empty));
        assert!(matches!(
            ImageRef::parse("bad image"),
            Err(ImageRefError::InvalidChar(_, ' '))
        ));
        assert!(matches!(
            ImageRef::parse("Busybox"),
            Err(ImageRefError::UpperCase(_))
        ));
        assert!(ImageRef::parse("busybox:").is_err());
        assert!(ImageRef::parse("busybox@sha256").is_err());
        assert!(ImageRef::parse("/busybox").is_err());
        assert!(ImageRef::parse("a//b").is_err());
    }
}
