//! The certificate authority every Fast Sandbox certificate chains to.
//!
//! Generated once and stored; later runs load it and keep signing with it,
//! so clients that already trust it (the apiserver through the webhook's
//! caBundle, the scheduler, the controller) keep working across renewals.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::CertError;
use crate::leaf::{LeafSpec, Usage};

/// Common name of the generated CA.
pub const CA_COMMON_NAME: &str = "fast-sandbox-ca";
/// Lifetime of a generated CA.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// Lifetime of an issued certificate; renewal starts well before the end.
pub const LEAF_VALIDITY: Duration = Duration::days(365);
/// Backdating of `notBefore`, so a node whose clock lags a little still
/// accepts a fresh certificate.
const CLOCK_SKEW: Duration = Duration::hours(1);

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedCert {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM private key (PKCS#8).
    pub key_pem: String,
}

/// The CA: its certificate and the key that signs leaves.
pub struct Authority {
    pem: KeyedCert,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed CA with an ECDSA P-256 key.
    pub fn generate() -> Result<Self, CertError> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, CA_COMMON_NAME);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Fast Sandbox");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pem = KeyedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Authority {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a stored CA.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Parse {
            what: "CA key".into(),
            message: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| CertError::Parse {
            what: "CA certificate".into(),
            message: e.to_string(),
        })?;
        Ok(Authority {
            pem: KeyedCert {
                cert_pem: cert_pem.to_string(),
                key_pem: key_pem.to_string(),
            },
            issuer,
        })
    }

    /// The CA certificate and key.
    pub fn pem(&self) -> &KeyedCert {
        &self.pem
    }

    /// The CA certificate, PEM: what clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.pem.cert_pem
    }

    /// Issues a certificate as `spec` describes, with a new key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<KeyedCert, CertError> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.as_str());
        params.subject_alt_names = spec
            .dns_names
            .iter()
            .map(|d| {
                d.as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(CertError::Generate)
            })
            .chain(
                spec.ip_addresses
                    .iter()
                    .map(|ip| Ok(SanType::IpAddress(*ip))),
            )
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match spec.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + LEAF_VALIDITY;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(KeyedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
