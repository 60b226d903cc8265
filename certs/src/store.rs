//! Where certificates live: Kubernetes Secrets in the system namespace, or a
//! directory of files for local use (one subdirectory per Secret name,
//! one file per key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// The keys of one Secret, PEM text each.
pub type Entries = BTreeMap<String, String>;

/// Why a store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The apiserver refused or failed.
    #[error("secret {name}: {source}")]
    Kube {
        /// Secret name.
        name: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Secret type of a stored bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `kubernetes.io/tls` (has `tls.crt` and `tls.key`).
    Tls,
    /// `Opaque` (the CA).
    Opaque,
}

/// A place to keep named bundles of PEM entries.
pub trait Store: Send + Sync {
    /// The entries stored under `name`, if any.
    fn load<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Entries>, StoreError>>;
    /// Stores `entries` under `name`, replacing what was there.
    fn save<'a>(
        &'a self,
        name: &'a str,
        kind: Kind,
        entries: &'a Entries,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Secrets in one namespace.
pub struct Secrets {
    api: Api<Secret>,
}

impl Secrets {
    /// Secrets of `namespace`.
    pub fn new(client: Client, namespace: &str) -> Self {
        Secrets {
            api: Api::namespaced(client, namespace),
        }
    }
}

impl Store for Secrets {
    fn load<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Entries>, StoreError>> {
        Box::pin(async move {
            let secret = self
                .api
                .get_opt(name)
                .await
                .map_err(|source| StoreError::Kube {
                    name: name.to_string(),
                    source,
                })?;
            Ok(secret.map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
                    .collect()
            }))
        })
    }

    fn save<'a>(
        &'a self,
        name: &'a str,
        kind: Kind,
        entries: &'a Entries,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let err = |source| StoreError::Kube {
                name: name.to_string(),
                source,
            };
            let existing = self.api.get_opt(name).await.map_err(err)?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    labels: Some(
                        [(
                            "app.kubernetes.io/managed-by".to_string(),
                            "fast-sandbox-certs".to_string(),
                        )]
                        .into(),
                    ),
                    resource_version: existing
                        .as_ref()
                        .and_then(|s| s.metadata.resource_version.clone()),
                    ..Default::default()
                },
                type_: Some(
                    match kind {
                        Kind::Tls => "kubernetes.io/tls",
                        Kind::Opaque => "Opaque",
                    }
                    .to_string(),
                ),
                data: Some(
                    entries
                        .iter()
                        .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                        .collect(),
                ),
                ..Default::default()
            };
            let pp = PostParams::default();
            match existing {
                // Replace with the resourceVersion read above: a concurrent
                // writer makes this fail rather than be overwritten.
                Some(_) => self.api.replace(name, &pp, &secret).await.map_err(err)?,
                None => self.api.create(&pp, &secret).await.map_err(err)?,
            };
            Ok(())
        })
    }
}

/// A directory: `<dir>/<name>/<key>`.
pub struct Files {
    dir: PathBuf,
}

impl Files {
    /// Files under `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Files { dir: dir.into() }
    }

    /// Where key `key` of bundle `name` is written.
    pub fn path(&self, name: &str, key: &str) -> PathBuf {
        self.dir.join(name).join(key)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, so a
/// reader (a server reloading its certificate) never sees half a file.
pub fn write_atomically(path: &Path, contents: &str) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    std::fs::write(&tmp, contents).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

impl Store for Files {
    fn load<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Entries>, StoreError>> {
        Box::pin(async move {
            let dir = self.dir.join(name);
            let read = match std::fs::read_dir(&dir) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err(&dir)(e)),
            };
            let mut entries = Entries::new();
            for entry in read {
                let entry = entry.map_err(io_err(&dir))?;
                let key = entry.file_name().to_string_lossy().to_string();
                if key.starts_with('.') {
                    continue;
                }
                let path = entry.path();
                let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
                entries.insert(key, text);
            }
            Ok(Some(entries))
        })
    }

    fn save<'a>(
        &'a self,
        name: &'a str,
        _kind: Kind,
        entries: &'a Entries,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // The key first: a reader that sees the new certificate then
            // also finds its key.
            let mut ordered: Vec<(&String, &String)> = entries.iter().collect();
            ordered.sort_by_key(|(k, _)| !k.ends_with(".key"));
            for (key, value) in ordered {
                write_atomically(&self.path(name, key), value)?;
            }
            Ok(())
        })
    }
}
