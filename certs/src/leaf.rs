//! What each certificate must say, and whether an existing one still does.

use std::collections::BTreeSet;
use std::net::IpAddr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::CertError;

/// Name of the Secret holding the CA (`ca.crt`, `ca.key`).
pub const CA_SECRET: &str = "fast-sandbox-ca";
/// Renew a certificate that expires within this many seconds (30 days).
pub const DEFAULT_RENEW_WITHIN_SECS: i64 = 30 * 24 * 3600;
/// Fixed ClusterIP of the extender Service; the scheduler calls it by IP.
pub const EXTENDER_CLUSTER_IP: &str = "10.96.0.50";

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (extended key usage serverAuth).
    Server,
    /// TLS client (extended key usage clientAuth).
    Client,
}

/// One certificate to keep in a Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafSpec {
    /// Secret (or directory) name.
    pub secret_name: String,
    /// Subject common name; for client certificates, the identity.
    pub common_name: String,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// Server or client.
    pub usage: Usage,
}

impl LeafSpec {
    /// A serving certificate for Service `service` in `namespace`: the short,
    /// namespaced and `.svc` names.
    pub fn for_service(service: &str, namespace: &str) -> Self {
        LeafSpec {
            secret_name: format!("{service}-tls"),
            common_name: format!("{service}.{namespace}.svc"),
            dns_names: vec![
                service.to_string(),
                format!("{service}.{namespace}"),
                format!("{service}.{namespace}.svc"),
            ],
            ip_addresses: Vec::new(),
            usage: Usage::Server,
        }
    }
}

impl LeafSpec {
    /// A client certificate whose common name is the caller's identity.
    pub fn client(secret: &str, name: &str) -> Self {
        LeafSpec {
            secret_name: secret.into(),
            common_name: name.into(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            usage: Usage::Client,
        }
    }
}

/// The certificates of a Fast Sandbox installation in `namespace`.
pub fn standard(namespace: &str) -> Vec<LeafSpec> {
    let mut extender = LeafSpec::for_service("fast-sandbox-extender", namespace);
    extender
        .ip_addresses
        .push(EXTENDER_CLUSTER_IP.parse().expect("constant IP parses"));
    vec![
        LeafSpec::for_service("fast-sandbox-webhook", namespace),
        extender,
        // Clients dial an agent's pod IP and verify this name.
        LeafSpec {
            secret_name: "fast-sandbox-agent-tls".into(),
            common_name: "fast-sandbox-agent".into(),
            dns_names: vec!["fast-sandbox-agent".into()],
            ip_addresses: Vec::new(),
            usage: Usage::Server,
        },
        LeafSpec::client("fast-sandbox-controller-client", "fast-sandbox-controller"),
        // The access server: served to the apiserver's aggregator, and a
        // client of agents under a name of its own.
        LeafSpec::for_service("fast-sandbox-gateway", namespace),
        LeafSpec::client("fast-sandbox-gateway-client", "fast-sandbox-gateway"),
        // For a second scheduler profile (deploy/scheduler/second-profile.yaml)
        // calling the extender.
        LeafSpec::client("fast-sandbox-scheduler-client", "fast-sandbox-scheduler"),
    ]
}

/// Why a stored certificate must be replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Still good.
    Keep,
    /// Replace it, for this reason.
    Renew(String),
}

fn der_of(pem: &str, what: &str) -> Result<Vec<u8>, CertError> {
    let (_, p) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| CertError::Parse {
            what: what.into(),
            message: e.to_string(),
        })?;
    Ok(p.contents)
}

/// Unix time at which a PEM certificate expires.
pub fn not_after(cert_pem: &str) -> Result<i64, CertError> {
    let der = der_of(cert_pem, "certificate")?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| CertError::Parse {
        what: "certificate".into(),
        message: e.to_string(),
    })?;
    Ok(cert.validity().not_after.timestamp())
}

/// Whether the stored `cert_pem`/`key_pem` still satisfies `spec`: signed by
/// `ca_pem`, its key matching, more than `renew_within_secs` before expiry
/// at unix time `now`, with exactly the wanted names.
pub fn check(
    spec: &LeafSpec,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    now: i64,
    renew_within_secs: i64,
) -> Renewal {
    match inspect(spec, cert_pem, key_pem, ca_pem, now, renew_within_secs) {
        Ok(r) => r,
        Err(e) => Renewal::Renew(e.to_string()),
    }
}

fn inspect(
    spec: &LeafSpec,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    now: i64,
    renew_within_secs: i64,
) -> Result<Renewal, CertError> {
    let parse_err = |what: &str| {
        let what = what.to_string();
        move |e: x509_parser::nom::Err<x509_parser::error::X509Error>| CertError::Parse {
            what,
            message: e.to_string(),
        }
    };
    let ca_der = der_of(ca_pem, "CA certificate")?;
    let (_, ca) = X509Certificate::from_der(&ca_der).map_err(parse_err("CA certificate"))?;
    let der = der_of(cert_pem, "certificate")?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(parse_err("certificate"))?;

    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Ok(Renewal::Renew("not signed by the current CA".into()));
    }
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| CertError::Parse {
        what: "private key".into(),
        message: e.to_string(),
    })?;
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return Ok(Renewal::Renew(
            "private key does not match the certificate".into(),
        ));
    }
    let expires = cert.validity().not_after.timestamp();
    if expires - now < renew_within_secs {
        return Ok(Renewal::Renew(format!(
            "expires in {} days",
            (expires - now).max(0) / 86_400
        )));
    }
    let mut dns = BTreeSet::new();
    let mut ips = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    dns.insert(d.to_string());
                }
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    ips.extend(ip);
                }
                _ => {}
            }
        }
    }
    let want_dns: BTreeSet<String> = spec.dns_names.iter().cloned().collect();
    let want_ips: BTreeSet<IpAddr> = spec.ip_addresses.iter().copied().collect();
    if dns != want_dns || ips != want_ips {
        return Ok(Renewal::Renew("subject alternative names changed".into()));
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok());
    if cn != Some(spec.common_name.as_str()) {
        return Ok(Renewal::Renew("common name changed".into()));
    }
    Ok(Renewal::Keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::Authority;

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn standard_set_matches_the_contract() {
        let names: Vec<_> = standard("fast-sandbox-system")
            .into_iter()
            .map(|s| s.secret_name)
            .collect();
        assert_eq!(
            names,
            [
                "fast-sandbox-webhook-tls",
                "fast-sandbox-extender-tls",
                "fast-sandbox-agent-tls",
                "fast-sandbox-controller-client",
                "fast-sandbox-gateway-tls",
                "fast-sandbox-gateway-client",
                "fast-sandbox-scheduler-client"
            ]
        );
        let gw = &standard("fast-sandbox-system")[5];
        assert_eq!(gw.common_name, "fast-sandbox-gateway");
        assert_eq!(gw.usage, Usage::Client);
        let w = &standard("fast-sandbox-system")[0];
        assert_eq!(
            w.dns_names,
            [
                "fast-sandbox-webhook",
                "fast-sandbox-webhook.fast-sandbox-system",
                "fast-sandbox-webhook.fast-sandbox-system.svc"
            ]
        );
    }

    #[test]
    fn fresh_certificate_is_kept_and_changes_force_renewal() {
        let ca = Authority::generate().unwrap();
        let spec = standard("ns").remove(1);
        let leaf = ca.issue(&spec).unwrap();
        let n = now();
        let keep = check(
            &spec,
            &leaf.cert_pem,
            &leaf.key_pem,
            ca.cert_pem(),
            n,
            DEFAULT_RENEW_WITHIN_SECS,
        );
        assert_eq!(keep, Renewal::Keep);

        // Close to expiry.
        let late = n + 340 * 86_400;
        assert!(matches!(
            check(&spec, &leaf.cert_pem, &leaf.key_pem, ca.cert_pem(), late, DEFAULT_RENEW_WITHIN_SECS),
            Renewal::Renew(r) if r.starts_with("expires in")
        ));
        // Names changed.
        let mut other = spec.clone();
        other.ip_addresses.clear();
        assert_eq!(
            check(
                &other,
                &leaf.cert_pem,
                &leaf.key_pem,
                ca.cert_pem(),
                n,
                DEFAULT_RENEW_WITHIN_SECS
            ),
            Renewal::Renew("subject alternative names changed".into())
        );
        // Another CA.
        let ca2 = Authority::generate().unwrap();
        assert_eq!(
            check(
                &spec,
                &leaf.cert_pem,
                &leaf.key_pem,
                ca2.cert_pem(),
                n,
                DEFAULT_RENEW_WITHIN_SECS
            ),
            Renewal::Renew("not signed by the current CA".into())
        );
        // Wrong key.
        let leaf2 = ca.issue(&spec).unwrap();
        assert_eq!(
            check(
                &spec,
                &leaf.cert_pem,
                &leaf2.key_pem,
                ca.cert_pem(),
                n,
                DEFAULT_RENEW_WITHIN_SECS
            ),
            Renewal::Renew("private key does not match the certificate".into())
        );
        // Garbage.
        assert!(matches!(
            check(
                &spec,
                "junk",
                &leaf.key_pem,
                ca.cert_pem(),
                n,
                DEFAULT_RENEW_WITHIN_SECS
            ),
            Renewal::Renew(_)
        ));
    }

    #[test]
    fn stored_ca_signs_verifiable_leaves() {
        let ca = Authority::generate().unwrap();
        let again = Authority::from_pem(ca.cert_pem(), &ca.pem().key_pem).unwrap();
        let spec = standard("ns").remove(3);
        let leaf = again.issue(&spec).unwrap();
        assert_eq!(
            check(
                &spec,
                &leaf.cert_pem,
                &leaf.key_pem,
                ca.cert_pem(),
                now(),
                DEFAULT_RENEW_WITHIN_SECS
            ),
            Renewal::Keep
        );
        assert!(not_after(&leaf.cert_pem).unwrap() > now() + 360 * 86_400);
    }
}
