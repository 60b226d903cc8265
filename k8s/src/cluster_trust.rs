//! The cluster's own trust, as kube-apiserver publishes it in the ConfigMap
//! `kube-system/extension-apiserver-authentication`:
//!
//! - `client-ca-file`: the CA of client certificates the apiserver accepts.
//!   The apiserver presents one of those when it calls our webhook, and the
//!   scheduler when it calls our extender, so those servers trust it.
//! - `requestheader-*`: the front proxy. When the apiserver forwards a
//!   request to an aggregated API server (our access server), it presents a
//!   client certificate from `requestheader-client-ca-file` with a name in
//!   `requestheader-allowed-names` and says who the user is in headers.
//!
//! [`run`] keeps a [`ClusterTrust`] in step with the ConfigMap, so a
//! rotated CA is trusted without a restart.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use fast_sandbox_server::Peer;
use fast_sandbox_server::client_auth::{AllowedNames, ClientCa, PeerError, common_name};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;

/// Namespace of the ConfigMap.
pub const NAMESPACE: &str = "kube-system";
/// Name of the ConfigMap.
pub const CONFIG_MAP: &str = "extension-apiserver-authentication";

/// How the front proxy names the user, from the ConfigMap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHeaders {
    /// Front-proxy certificate names accepted; empty accepts any name the
    /// front-proxy CA signed (the apiserver's own rule).
    pub allowed_names: Vec<String>,
    /// Headers carrying the user name, first present wins.
    pub username: Vec<String>,
    /// Headers carrying the user's UID.
    pub uid: Vec<String>,
    /// Headers carrying groups (repeated).
    pub group: Vec<String>,
    /// Prefixes of headers carrying extra attributes.
    pub extra_prefix: Vec<String>,
}

/// A user as the apiserver authenticated it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserInfo {
    /// User name.
    pub username: String,
    /// UID, when the apiserver sends one.
    pub uid: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (scopes, credential ids...).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why a forwarded request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum FrontProxyError {
    /// The caller is not the apiserver's front proxy.
    #[error("{0}")]
    Peer(#[from] PeerError),
    /// The request names no user.
    #[error("the front proxy named no user (none of the headers {0:?})")]
    NoUser(Vec<String>),
}

/// The cluster's client CA and front-proxy settings, kept current by [`run`].
#[derive(Debug)]
pub struct ClusterTrust {
    /// Trusted for clients of the apiserver (webhook, extender callers).
    pub client_ca: Arc<ClientCa>,
    /// Trusted for the front proxy (aggregated API callers).
    pub front_proxy_ca: Arc<ClientCa>,
    headers: RwLock<RequestHeaders>,
    loaded_tx: watch::Sender<bool>,
}

impl Default for ClusterTrust {
    fn default() -> Self {
        Self {
            client_ca: ClientCa::new(),
            front_proxy_ca: ClientCa::new(),
            headers: RwLock::new(RequestHeaders::default()),
            loaded_tx: watch::channel(false).0,
        }
    }
}

fn json_list(data: &BTreeMap<String, String>, key: &str) -> Vec<String> {
    data.get(key)
        .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
        .unwrap_or_default()
}

impl ClusterTrust {
    /// Nothing trusted yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Applies the ConfigMap's data. A key whose CA does not parse keeps
    /// the previous trust for that key (and says so).
    pub fn apply(&self, data: &BTreeMap<String, String>) {
        if let Some(pem) = data.get("client-ca-file")
            && let Err(e) = self.client_ca.set_pem(pem.as_bytes())
        {
            tracing::warn!(error = %e, "client-ca-file of {NAMESPACE}/{CONFIG_MAP} is unusable; keeping the previous one");
        }
        if let Some(pem) = data.get("requestheader-client-ca-file")
            && let Err(e) = self.front_proxy_ca.set_pem(pem.as_bytes())
        {
            tracing::warn!(error = %e, "requestheader-client-ca-file of {NAMESPACE}/{CONFIG_MAP} is unusable; keeping the previous one");
        }
        let headers = RequestHeaders {
            allowed_names: json_list(data, "requestheader-allowed-names"),
            username: json_list(data, "requestheader-username-headers"),
            uid: json_list(data, "requestheader-uid-headers"),
            group: json_list(data, "requestheader-group-headers"),
            extra_prefix: json_list(data, "requestheader-extra-headers-prefix"),
        };
        *self.headers.write().unwrap_or_else(|p| p.into_inner()) = headers;
        self.loaded_tx.send_replace(true);
    }

    /// The front-proxy settings now.
    pub fn headers(&self) -> RequestHeaders {
        self.headers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until the ConfigMap was read once.
    pub async fn loaded(&self) {
        let mut rx = self.loaded_tx.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    /// Whether the ConfigMap was read once.
    pub fn is_loaded(&self) -> bool {
        *self.loaded_tx.borrow()
    }

    /// The user of a request the front proxy forwarded: the peer must hold
    /// a front-proxy certificate (verified in the handshake against
    /// [`ClusterTrust::front_proxy_ca`]) with an allowed name, and the
    /// headers name the user.
    pub fn forwarded_user(
        &self,
        peer: &Peer,
        headers: &http::HeaderMap,
    ) -> Result<UserInfo, FrontProxyError> {
        let cfg = self.headers();
        let cert = peer.client_cert.as_ref().ok_or(PeerError::NoCertificate)?;
        if !cfg.allowed_names.is_empty() {
            AllowedNames::new(cfg.allowed_names.iter().cloned()).check(peer)?;
        } else if common_name(cert).is_none() {
            return Err(PeerError::NotAllowed {
                name: String::new(),
                allowed: "any front-proxy name".into(),
            }
            .into());
        }
        user_from_headers(&cfg, headers)
    }
}

/// Reads the user from the front proxy's headers (`X-Remote-User`,
/// `X-Remote-Group`, `X-Remote-Extra-<key>` with the configured names).
pub fn user_from_headers(
    cfg: &RequestHeaders,
    headers: &http::HeaderMap,
) -> Result<UserInfo, FrontProxyError> {
    let first = |names: &[String]| {
        names.iter().find_map(|n| {
            headers
                .get(n.as_str())
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        })
    };
    let username =
        first(&cfg.username).ok_or_else(|| FrontProxyError::NoUser(cfg.username.clone()))?;
    let uid = first(&cfg.uid);
    let mut groups = Vec::new();
    for n in &cfg.group {
        for v in headers.get_all(n.as_str()) {
            if let Ok(v) = v.to_str() {
                groups.push(v.to_string());
            }
        }
    }
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        let lname = name.as_str();
        for prefix in &cfg.extra_prefix {
            let p = prefix.to_ascii_lowercase();
            if let Some(key) = lname.strip_prefix(p.as_str())
                && !key.is_empty()
                && let Ok(v) = value.to_str()
            {
                extra
                    .entry(percent_decode(key).to_ascii_lowercase())
                    .or_default()
                    .push(v.to_string());
            }
        }
    }
    Ok(UserInfo {
        username,
        uid,
        groups,
        extra,
    })
}

/// Extra keys travel percent-encoded in header names.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whose client certificates a server trusts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuthMode {
    /// The cluster's client CA (`client-ca-file` of
    /// kube-system/extension-apiserver-authentication), kept current.
    Cluster,
    /// The CA bundle in `--client-ca-file`.
    File,
    /// No client certificate is asked for: callers are unknown (for
    /// clusters whose apiserver or scheduler cannot present one; see the
    /// NetworkPolicy shipped in deploy/).
    None,
}

/// Flags of a server that only the apiserver or the scheduler may call.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientAuthArgs {
    /// Whose client certificates to trust.
    #[arg(long, env = "FAST_SANDBOX_CLIENT_AUTH", value_enum, default_value_t = ClientAuthMode::Cluster)]
    pub client_auth: ClientAuthMode,
    /// CA bundle for `--client-auth=file`.
    #[arg(long, env = "FAST_SANDBOX_CLIENT_CA_FILE")]
    pub client_ca_file: Option<std::path::PathBuf>,
    /// Common names of the client certificates accepted (comma separated);
    /// each server has its own default.
    #[arg(long, env = "FAST_SANDBOX_ALLOWED_CLIENTS", value_delimiter = ',')]
    pub allowed_clients: Vec<String>,
}

/// What a server needs to check its callers.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// Verifier for the TLS handshake (`None`: no client certificate).
    pub verifier: Option<Arc<ClientCa>>,
    /// Names accepted after the handshake (`None`: anyone, unknown).
    pub names: Option<AllowedNames>,
    /// The cluster's trust when read from the API.
    pub trust: Option<Arc<ClusterTrust>>,
}

/// Why client authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    /// `--client-auth=file` without a file.
    #[error("--client-auth=file needs --client-ca-file")]
    NoFile,
    /// The CA file is unusable.
    #[error("{0}")]
    Tls(#[from] fast_sandbox_server::tls::TlsError),
    /// The CA file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ClientAuthArgs {
    /// Builds the checks; with `cluster`, starts keeping the cluster's CA
    /// current (the server should turn ready only once
    /// [`ClusterTrust::loaded`]). `default_names` apply when no
    /// `--allowed-clients` is given.
    pub fn setup(
        &self,
        client: &Client,
        default_names: &[&str],
    ) -> Result<ClientAuth, ClientAuthError> {
        let names = if self.allowed_clients.is_empty() {
            AllowedNames::new(default_names.iter().copied())
        } else {
            AllowedNames::new(self.allowed_clients.iter().cloned())
        };
        Ok(match self.client_auth {
            ClientAuthMode::None => ClientAuth {
                verifier: None,
                names: None,
                trust: None,
            },
            ClientAuthMode::File => {
                let path = self.client_ca_file.clone().ok_or(ClientAuthError::NoFile)?;
                let pem = std::fs::read(&path).map_err(|source| ClientAuthError::Read {
                    path: path.clone(),
                    source,
                })?;
                ClientAuth {
                    verifier: Some(ClientCa::from_pem(&pem)?),
                    names: Some(names),
                    trust: None,
                }
            }
            ClientAuthMode::Cluster => {
                let trust = ClusterTrust::new();
                tokio::spawn(run(client.clone(), trust.clone()));
                ClientAuth {
                    verifier: Some(trust.client_ca.clone()),
                    names: Some(names),
                    trust: Some(trust),
                }
            }
        })
    }
}

impl ClientAuth {
    /// Waits until the trusted CA is known (at once unless it is read from
    /// the cluster).
    pub async fn loaded(&self) {
        if let Some(t) = &self.trust {
            t.loaded().await;
        }
    }
}

/// Keeps `trust` in step with the ConfigMap until the process ends.
pub async fn run(client: Client, trust: Arc<ClusterTrust>) {
    let api: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP}"));
    let mut stream = std::pin::pin!(
        watcher::watcher(api, cfg)
            .default_backoff()
            .applied_objects()
    );
    while let Some(cm) = stream.next().await {
        match cm {
            Ok(cm) => trust.apply(&cm.data.unwrap_or_default()),
            Err(e) => {
                tracing::warn!(error = %e, "watching {NAMESPACE}/{CONFIG_MAP} failed; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cfg() -> RequestHeaders {
        RequestHeaders {
            allowed_names: vec!["front-proxy-client".into()],
            username: vec!["X-Remote-User".into()],
            uid: vec!["X-Remote-Uid".into()],
            group: vec!["X-Remote-Group".into()],
            extra_prefix: vec!["X-Remote-Extra-".into()],
        }
    }

    #[test]
    fn the_user_comes_from_the_configured_headers() {
        let mut h = http::HeaderMap::new();
        h.insert("x-remote-user", HeaderValue::from_static("alice"));
        h.append("x-remote-group", HeaderValue::from_static("devs"));
        h.append(
            "x-remote-group",
            HeaderValue::from_static("system:authenticated"),
        );
        h.insert("x-remote-extra-scopes%2fx", HeaderValue::from_static("a"));
        let u = user_from_headers(&cfg(), &h).unwrap();
        assert_eq!(u.username, "alice");
        assert_eq!(u.groups, ["devs", "system:authenticated"]);
        assert_eq!(u.extra["scopes/x"], ["a"]);
        assert_eq!(u.uid, None);
        h.remove("x-remote-user");
        assert!(matches!(
            user_from_headers(&cfg(), &h),
            Err(FrontProxyError::NoUser(_))
        ));
    }

    #[test]
    fn the_config_map_sets_trust_and_headers() {
        let t = ClusterTrust::default();
        assert!(!t.is_loaded());
        let data = BTreeMap::from([
            (
                "requestheader-allowed-names".to_string(),
                r#"["front-proxy-client"]"#.to_string(),
            ),
            (
                "requestheader-username-headers".to_string(),
                r#"["X-Remote-User"]"#.to_string(),
            ),
            ("client-ca-file".to_string(), "garbage".to_string()),
        ]);
        t.apply(&data);
        assert!(t.is_loaded());
        assert!(!t.client_ca.is_loaded(), "an unusable CA is not trusted");
        assert_eq!(t.headers().allowed_names, ["front-proxy-client"]);
    }
}
