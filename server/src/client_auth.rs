//! Who may call a server: a client certificate signed by a trusted CA
//! (checked in the TLS handshake) whose subject common name is one of the
//! callers the server expects (checked per request, so a refusal is an
//! HTTP answer naming the caller rather than a bare TLS alert).
//!
//! The trusted CA may change while the server runs (a cluster's client CA
//! is read from the API and rotates), so the handshake verifier is one
//! whose roots can be swapped: [`ClientCa`].

use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::http::Peer;
use crate::tls::TlsError;

/// A client certificate verifier whose trusted CAs can be replaced at any
/// time. Until the first CA is set every client certificate is refused,
/// so a server never runs open while it waits for its trust to load.
#[derive(Debug)]
pub struct ClientCa {
    inner: RwLock<Option<Arc<dyn ClientCertVerifier>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Default for ClientCa {
    fn default() -> Self {
        Self {
            inner: RwLock::new(None),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }
}

impl ClientCa {
    /// A verifier that trusts nothing yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A verifier trusting the CAs of a PEM bundle.
    pub fn from_pem(pem: &[u8]) -> Result<Arc<Self>, TlsError> {
        let ca = Self::new();
        ca.set_pem(pem)?;
        Ok(ca)
    }

    /// Trusts exactly the CAs of `pem` from the next handshake on. A bundle
    /// that holds no usable certificate is refused and the previous trust
    /// kept.
    pub fn set_pem(&self, pem: &[u8]) -> Result<(), TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| TlsError::Verifier(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(TlsError::Verifier("no CA certificate in the bundle".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Some(verifier);
        Ok(())
    }

    /// Whether a CA has been set.
    pub fn is_loaded(&self) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn current(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

use rustls::pki_types::pem::PemObject;

impl ClientCertVerifier for ClientCa {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would borrow from a verifier that may be replaced; an
        // empty list lets the client choose its certificate itself.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.current() {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(
                "no client CA is trusted yet".to_string(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The subject common name of a DER certificate.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// Why a caller was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// No verified client certificate.
    #[error("a client certificate is required")]
    NoCertificate,
    /// The certificate names a caller this server does not serve.
    #[error("client {name:?} is not allowed; allowed callers: {allowed}")]
    NotAllowed {
        /// The certificate's common name (empty if it has none).
        name: String,
        /// The names accepted, comma separated.
        allowed: String,
    },
}

/// The callers a server accepts, by the common name of their verified
/// client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedNames {
    names: Vec<String>,
}

impl AllowedNames {
    /// Accepts exactly `names` (empty entries are ignored).
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            names: names
                .into_iter()
                .map(Into::into)
                .map(|n: String| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
        }
    }

    /// The accepted names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The caller's name if its certificate is one of the accepted.
    pub fn check(&self, peer: &Peer) -> Result<String, PeerError> {
        let cert = peer.client_cert.as_ref().ok_or(PeerError::NoCertificate)?;
        let name = common_name(cert).unwrap_or_default();
        if self.names.contains(&name) {
            Ok(name)
        } else {
            Err(PeerError::NotAllowed {
                name,
                allowed: self.names.join(", "),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn cert(cn: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        (params.self_signed(&key).unwrap(), key)
    }

    fn peer(cert: Option<&rcgen::Certificate>) -> Peer {
        Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            client_cert: cert.map(|c| c.der().clone()),
        }
    }

    #[test]
    fn names_are_checked_exactly() {
        let allowed = AllowedNames::new(["fast-sandbox-controller", " fast-sandbox-gateway ", ""]);
        assert_eq!(allowed.names().len(), 2);
        let (ok, _) = cert("fast-sandbox-gateway");
        assert_eq!(
            allowed.check(&peer(Some(&ok))).unwrap(),
            "fast-sandbox-gateway"
        );
        let (other, _) = cert("fast-sandbox-webhook.fast-sandbox-system.svc");
        let err = allowed.check(&peer(Some(&other))).unwrap_err();
        assert!(err.to_string().contains("fast-sandbox-webhook"), "{err}");
        assert_eq!(allowed.check(&peer(None)), Err(PeerError::NoCertificate));
    }

    #[test]
    fn trust_can_be_set_and_replaced_but_never_emptied() {
        let ca = ClientCa::new();
        assert!(!ca.is_loaded());
        let (c, _) = cert("ca");
        ca.set_pem(c.pem().as_bytes()).unwrap();
        assert!(ca.is_loaded());
        assert!(ca.set_pem(b"not pem").is_err());
        assert!(ca.is_loaded(), "a bad bundle keeps the previous trust");
    }
}
