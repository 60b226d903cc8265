//! An image already in containerd, resolved to what a sandbox needs: the
//! chain ID of its unpacked layers (the snapshot parent) and its
//! Entrypoint, Cmd, Env, WorkingDir and User. Resolving reads the index, the
//! manifest and the config from the content store, so results are cached by
//! the digest of the image's target: a digest never changes its content.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::runtime::Containerd;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// How deep an index may nest before the image is declared broken.
const MAX_INDEX_DEPTH: usize = 4;

/// A content descriptor as it appears in indexes and manifests.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    #[serde(default)]
    pub media_type: String,
    /// Content digest.
    pub digest: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: i64,
    /// Platform of a manifest inside an index.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// Platform of an index entry.
#[derive(Deserialize, Clone, Debug, Default)]
pub struct Platform {
    /// GOARCH spelling (`amd64`, `arm64`).
    #[serde(default)]
    pub architecture: String,
    /// GOOS spelling (`linux`).
    #[serde(default)]
    pub os: String,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// The part of an image config a sandbox's process inherits.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ExecConfig {
    /// Image entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Image default arguments.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Image environment, `NAME=value`.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Image working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Image user (`uid`, `uid:gid`, or a name).
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Deserialize, Debug)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ExecConfig>,
    rootfs: RootFs,
}

#[derive(Deserialize, Debug)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// An image resolved for running.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// Digest of the image's target (index or manifest).
    pub digest: String,
    /// Chain ID of the top layer: the committed snapshot a sandbox's rootfs
    /// is prepared from.
    pub chain_id: String,
    /// Process defaults.
    pub exec: ExecConfig,
    /// Bytes of manifest, config and layers.
    pub size_bytes: u64,
}

/// The architecture as OCI platforms spell it.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The chain ID of a layer stack (OCI image spec: `chain(n) =
/// sha256(chain(n-1) + " " + diff_id(n))`).
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut iter = diff_ids.iter();
    let mut chain = iter.next()?.clone();
    for diff in iter {
        let input = format!("{chain} {diff}");
        let digest = ring::digest::digest(&ring::digest::SHA256, input.as_bytes());
        chain = format!("sha256:{}", hex(digest.as_ref()));
    }
    Some(chain)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

fn is_index(media_type: &str, doc: &Document) -> bool {
    media_type == OCI_INDEX
        || media_type == DOCKER_LIST
        || doc
            .media_type
            .as_deref()
            .is_some_and(|m| m == OCI_INDEX || m == DOCKER_LIST)
        || (doc.manifests.is_some() && doc.config.is_none())
}

/// Picks the manifest for this host from an index: same OS and
/// architecture, else the only entry without a platform.
fn pick_manifest<'a>(manifests: &'a [Descriptor], arch: &str) -> Option<&'a Descriptor> {
    manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.architecture == arch && (p.os.is_empty() || p.os == "linux"))
        })
        .or_else(|| manifests.iter().find(|d| d.platform.is_none()))
}

/// Resolves images and caches the results by target digest; also remembers
/// when sandboxes last used each image, for the image cache report.
#[derive(Default)]
pub struct ImageCache {
    resolved: Mutex<HashMap<String, Arc<ResolvedImage>>>,
    last_used: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl ImageCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves `name` (normalised) from containerd, using the cache when
    /// the image's target digest was seen before. `ImageNotPresent` when
    /// the image is not in the namespace.
    pub async fn resolve(&self, cd: &Containerd, name: &str) -> Result<Arc<ResolvedImage>> {
        let Some(target) = cd.image_target(name).await? else {
            return Err(Error::ImageNotPresent {
                image: name.to_string(),
                why: format!(
                    "no image named {name} in containerd namespace {}",
                    cd.namespace()
                ),
            });
        };
        self.resolve_target(cd, name, &target).await
    }

    /// Like [`ImageCache::resolve`] when the target descriptor is known.
    pub async fn resolve_target(
        &self,
        cd: &Containerd,
        name: &str,
        target: &Descriptor,
    ) -> Result<Arc<ResolvedImage>> {
        if let Some(hit) = self.cached(&target.digest) {
            return Ok(hit);
        }
        let resolved = Arc::new(read_image(cd, name, target).await?);
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(target.digest.clone(), resolved.clone());
        Ok(resolved)
    }

    /// A cached resolution by target digest.
    pub fn cached(&self, digest: &str) -> Option<Arc<ResolvedImage>> {
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    /// Records that a sandbox started from `name` at `at` (keeps the latest).
    pub fn mark_used(&self, name: &str, at: DateTime<Utc>) {
        let mut used = self.last_used.lock().unwrap_or_else(|p| p.into_inner());
        let e = used.entry(name.to_string()).or_insert(at);
        if *e < at {
            *e = at;
        }
    }

    /// When a sandbox last started from `name`.
    pub fn last_used(&self, name: &str) -> Option<DateTime<Utc>> {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }
}

async fn read_image(cd: &Containerd, name: &str, target: &Descriptor) -> Result<ResolvedImage> {
    let bad = |message: String| Error::ImageContent {
        image: name.to_string(),
        message,
    };
    let arch = oci_arch();
    let mut desc = target.clone();
    let mut size = 0u64;
    let mut depth = 0;
    let manifest = loop {
        let blob = cd.read_blob(&desc.digest).await.map_err(|e| {
            if e.is_not_found() {
                Error::ImageNotPresent {
                    image: name.to_string(),
                    why: format!("content {} is missing", desc.digest),
                }
            } else {
                e
            }
        })?;
        size += blob.len() as u64;
        let doc: Document = serde_json::from_slice(&blob)
            .map_err(|e| bad(format!("{} is not a manifest or index: {e}", desc.digest)))?;
        if !is_index(&desc.media_type, &doc) {
            break doc;
        }
        depth += 1;
        if depth > MAX_INDEX_DEPTH {
            return Err(bad("indexes nest too deep".into()));
        }
        let manifests = doc.manifests.unwrap_or_default();
        desc = pick_manifest(&manifests, arch)
            .cloned()
            .ok_or_else(|| bad(format!("no manifest for linux/{arch}")))?;
        // Only the chosen manifest is counted: the others are not on the node.
    };
    let config_desc = manifest
        .config
        .ok_or_else(|| bad("manifest has no config".into()))?;
    let config_blob = cd.read_blob(&config_desc.digest).await.map_err(|e| {
        if e.is_not_found() {
            Error::ImageNotPresent {
                image: name.to_string(),
                why: format!("config {} is missing", config_desc.digest),
            }
        } else {
            e
        }
    })?;
    size += config_blob.len() as u64;
    size += manifest
        .layers
        .iter()
        .map(|l| u64::try_from(l.size).unwrap_or(0))
        .sum::<u64>();
    let config: ConfigFile = serde_json::from_slice(&config_blob)
        .map_err(|e| bad(format!("config {} is invalid: {e}", config_desc.digest)))?;
    let chain_id =
        chain_id(&config.rootfs.diff_ids).ok_or_else(|| bad("image has no layers".into()))?;
    Ok(ResolvedImage {
        digest: target.digest.clone(),
        chain_id,
        exec: config.config.unwrap_or_default(),
        size_bytes: size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_of_one_layer_is_its_diff_id() {
        assert_eq!(
            chain_id(&["sha256:aa".into()]).as_deref(),
            Some("sha256:aa")
        );
        assert_eq!(chain_id(&[]), None);
    }

    #[test]
    fn chain_id_hashes_the_stack() {
        // sha256("sha256:aa sha256:bb")
        let c = chain_id(&["sha256:aa".into(), "sha256:bb".into()]).unwrap();
        let expect = ring::digest::digest(&ring::digest::SHA256, b"sha256:aa sha256:bb");
        assert_eq!(c, format!("sha256:{}", hex(expect.as_ref())));
        assert_eq!(c.len(), "sha256:".len() + 64);
    }

    #[test]
    fn index_entries_are_chosen_by_platform() {
        let doc: Document = serde_json::from_str(
            r#"{"schemaVersion":2,"manifests":[
                {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:arm","size":1,"platform":{"architecture":"arm64","os":"linux"}},
                {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:amd","size":1,"platform":{"architecture":"amd64","os":"linux"}}]}"#,
        )
        .unwrap();
        assert!(is_index("", &doc));
        let m = doc.manifests.unwrap();
        assert_eq!(pick_manifest(&m, "amd64").unwrap().digest, "sha256:amd");
        assert_eq!(pick_manifest(&m, "arm64").unwrap().digest, "sha256:arm");
        assert!(pick_manifest(&m, "s390x").is_none());
    }

    #[test]
    fn exec_config_parses_docker_spelling() {
        let c: ConfigFile = serde_json::from_str(
            r#"{"config":{"Entrypoint":["/bin/sh"],"Cmd":["-c","true"],"Env":["PATH=/bin"],"WorkingDir":"/w","User":"1000:1000"},
                "rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#,
        )
        .unwrap();
        let e = c.config.unwrap();
        assert_eq!(e.entrypoint.unwrap(), ["/bin/sh"]);
        assert_eq!(e.working_dir.as_deref(), Some("/w"));
        assert_eq!(c.rootfs.diff_ids, ["sha256:x"]);
    }

    #[test]
    fn last_used_keeps_the_latest() {
        let cache = ImageCache::new();
        let t1 = DateTime::from_timestamp(10, 0).unwrap();
        let t2 = DateTime::from_timestamp(20, 0).unwrap();
        cache.mark_used("a", t2);
        cache.mark_used("a", t1);
        assert_eq!(cache.last_used("a"), Some(t2));
        assert_eq!(cache.last_used("b"), None);
    }
}
