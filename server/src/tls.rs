//! TLS for servers and clients, with certificates read from files that a
//! Kubernetes Secret mount (or `fast-sandbox-certs`) may replace at any time:
//! the server picks up a rotated certificate at the next handshake, without
//! a restart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::client_auth::ClientCa;

/// How often, at most, the certificate files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not build a verifier.
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

fn file_err(path: &Path, message: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate found"));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

/// Reads a CA bundle into a root store.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| file_err(path, e))?;
    }
    Ok(roots)
}

fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certs(cert)?;
    let key = read_key(key)?;
    let signing = any_supported_type(&key).map_err(|e| file_err(cert, e))?;
    let ck = CertifiedKey::new(chain, signing);
    // During a rotation the key and the certificate are replaced one after
    // the other; a pair caught half-way is refused here and retried later.
    ck.keys_match()
        .map_err(|e| file_err(cert, format!("does not match its key: {e}")))?;
    Ok(Arc::new(ck))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A certificate resolver that re-reads its files when their modification
/// time changes. A broken new file keeps the previous certificate in use
/// (and logs why), so a bad rotation never takes a server down.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<(Option<SystemTime>, Option<SystemTime>, Arc<CertifiedKey>)>,
    last_check: Mutex<Instant>,
}

impl ReloadingCert {
    /// Loads the certificate and key now; fails if they are unusable.
    pub fn new(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Self, TlsError> {
        let cert_path = cert_path.into();
        let key_path = key_path.into();
        let ck = load_certified_key(&cert_path, &key_path)?;
        Ok(Self {
            current: RwLock::new((modified(&cert_path), modified(&key_path), ck)),
            cert_path,
            key_path,
            last_check: Mutex::new(Instant::now()),
        })
    }

    fn maybe_reload(&self) {
        {
            let mut last = self.last_check.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < RELOAD_CHECK {
                return;
            }
            *last = Instant::now();
        }
        let (cm, km) = (modified(&self.cert_path), modified(&self.key_path));
        let unchanged = {
            let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
            cur.0 == cm && cur.1 == km
        };
        if unchanged {
            return;
        }
        match load_certified_key(&self.cert_path, &self.key_path) {
            Ok(ck) => {
                tracing::info!(cert = %self.cert_path.display(), "reloaded rotated TLS certificate");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = (cm, km, ck);
            }
            Err(e) => {
                tracing::warn!(error = %e, "rotated TLS certificate is unusable; keeping the previous one");
            }
        }
    }

    /// Re-reads the files now if they changed (tests call this to skip the
    /// rate limit).
    pub fn reload_now(&self) {
        *self.last_check.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now() - RELOAD_CHECK;
        self.maybe_reload();
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.maybe_reload();
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .2
                .clone(),
        )
    }
}

/// Server TLS settings.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    /// Builds a rustls server config (TLS 1.2 and 1.3, ALPN h2 then
    /// http/1.1) whose certificate reloads on rotation.
    pub fn build(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let resolver = Arc::new(ReloadingCert::new(&self.cert, &self.key)?);
        self.build_with(resolver)
    }

    /// Like [`ServerTls::build`] with a resolver the caller keeps (tests).
    pub fn build_with(&self, resolver: Arc<ReloadingCert>) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier: Option<Arc<dyn ClientCertVerifier>> = match &self.client_ca {
            Some(ca) => {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let roots = Arc::new(read_roots(ca)?);
                Some(
                    WebPkiClientVerifier::builder_with_provider(roots, provider)
                        .build()
                        .map_err(|e| TlsError::Verifier(e.to_string()))?,
                )
            }
            None => None,
        };
        server_config(resolver, verifier)
    }

    /// Like [`ServerTls::build`], but clients must present a certificate
    /// signed by whatever `client_ca` trusts at the time of the handshake
    /// (`client_ca` in `self` is ignored).
    pub fn build_with_client_ca(
        &self,
        client_ca: Arc<ClientCa>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let resolver = Arc::new(ReloadingCert::new(&self.cert, &self.key)?);
        server_config(resolver, Some(client_ca))
    }
}

fn server_config(
    resolver: Arc<ReloadingCert>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Builds a client config that trusts only `ca` and, when given, presents a
/// client certificate (mutual TLS to agents). ALPN offers h2 so one
/// connection carries every request to a peer.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(read_roots(ca)?);
    let mut config = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(read_certs(cert)?, read_key(key)?)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Flags of a serving certificate, shared by the binaries that always
/// serve TLS (flatten into the clap struct). Defaults match the Secret
/// mount path the manifests use.
#[derive(Clone, Debug, clap::Args)]
pub struct ServingArgs {
    /// PEM serving certificate (re-read when the file changes).
    #[arg(
        long,
        env = "FAST_SANDBOX_TLS_CERT",
        default_value = "/etc/fast-sandbox/tls/tls.crt"
    )]
    pub tls_cert: PathBuf,
    /// PEM private key of the serving certificate.
    #[arg(
        long,
        env = "FAST_SANDBOX_TLS_KEY",
        default_value = "/etc/fast-sandbox/tls/tls.key"
    )]
    pub tls_key: PathBuf,
}
