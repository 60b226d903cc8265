//! Makes a [`Store`] hold a usable CA and every wanted certificate, creating
//! or renewing only what is missing, expiring, or no longer says the right
//! names. Running it again changes nothing, so the Job that runs it can be
//! re-run at will (and should be, before certificates expire).

use crate::CertError;
use crate::authority::{Authority, KeyedCert};
use crate::leaf::{self, CA_SECRET, LeafSpec, Renewal};
use crate::store::{Entries, Kind, Store, StoreError};

/// Key of the CA certificate in every Secret.
pub const CA_CRT: &str = "ca.crt";
/// Key of the CA private key in the CA Secret.
pub const CA_KEY: &str = "ca.key";
/// Key of a certificate.
pub const TLS_CRT: &str = "tls.crt";
/// Key of a private key.
pub const TLS_KEY: &str = "tls.key";

/// Why reconciling failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading or writing the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Making a certificate failed.
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// What happened to one bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// It was valid and left alone.
    Kept,
    /// It did not exist and was created.
    Created,
    /// It was replaced, for this reason.
    Renewed(String),
}

/// One bundle after reconciling.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// Secret name.
    pub name: String,
    /// Secret type.
    pub kind: Kind,
    /// Its entries.
    pub entries: Entries,
    /// What was done.
    pub action: Action,
}

/// The result: the CA and every bundle, CA first.
#[derive(Debug)]
pub struct Summary {
    /// The CA in use.
    pub authority: Authority,
    /// The CA bundle, then one per leaf spec.
    pub bundles: Vec<Bundle>,
}

/// Ensures `store` holds a CA and the certificates of `specs`, at unix time
/// `now`, renewing those that expire within `renew_within_secs`.
pub async fn ensure(
    store: &dyn Store,
    specs: &[LeafSpec],
    now: i64,
    renew_within_secs: i64,
) -> Result<Summary, ReconcileError> {
    let (authority, action) = authority(store, now).await?;
    let mut bundles = vec![Bundle {
        name: CA_SECRET.to_string(),
        kind: Kind::Opaque,
        entries: ca_entries(authority.pem()),
        action,
    }];
    if bundles[0].action != Action::Kept {
        store
            .save(CA_SECRET, Kind::Opaque, &bundles[0].entries)
            .await?;
    }
    for spec in specs {
        let existing = store.load(&spec.secret_name).await?;
        let verdict = existing
            .as_ref()
            .map(|e| stored_verdict(spec, e, &authority, now, renew_within_secs));
        let (entries, action) = match (verdict, existing) {
            (Some(Renewal::Keep), Some(e)) => (e, Action::Kept),
            (verdict, _) => {
                let issued = authority.issue(spec)?;
                let entries = leaf_entries(&issued, authority.cert_pem());
                store.save(&spec.secret_name, Kind::Tls, &entries).await?;
                let action = match verdict {
                    Some(Renewal::Renew(why)) => Action::Renewed(why),
                    _ => Action::Created,
                };
                (entries, action)
            }
        };
        tracing::info!(secret = %spec.secret_name, action = ?action, "certificate reconciled");
        bundles.push(Bundle {
            name: spec.secret_name.clone(),
            kind: Kind::Tls,
            entries,
            action,
        });
    }
    Ok(Summary { authority, bundles })
}

/// Whether a stored leaf bundle can stay.
fn stored_verdict(
    spec: &LeafSpec,
    e: &Entries,
    authority: &Authority,
    now: i64,
    renew_within_secs: i64,
) -> Renewal {
    let (Some(crt), Some(key)) = (e.get(TLS_CRT), e.get(TLS_KEY)) else {
        return Renewal::Renew("tls.crt or tls.key missing".into());
    };
    match leaf::check(spec, crt, key, authority.cert_pem(), now, renew_within_secs) {
        Renewal::Keep if e.get(CA_CRT).map(String::as_str) != Some(authority.cert_pem()) => {
            Renewal::Renew("ca.crt is not the current CA".into())
        }
        r => r,
    }
}

async fn authority(store: &dyn Store, now: i64) -> Result<(Authority, Action), ReconcileError> {
    let Some(e) = store.load(CA_SECRET).await? else {
        tracing::info!("no CA stored; generating one");
        return Ok((Authority::generate()?, Action::Created));
    };
    let loaded = match (e.get(CA_CRT), e.get(CA_KEY)) {
        (Some(crt), Some(key)) => Authority::from_pem(crt, key).and_then(|a| {
            let expires = leaf::not_after(a.cert_pem())?;
            Ok((a, expires))
        }),
        _ => Err(CertError::Parse {
            what: "CA secret".into(),
            message: "ca.crt or ca.key missing".into(),
        }),
    };
    match loaded {
        Ok((a, expires)) if expires > now => Ok((a, Action::Kept)),
        Ok(_) => {
            tracing::warn!(
                "stored CA has expired; generating a new one (every certificate is reissued)"
            );
            Ok((Authority::generate()?, Action::Renewed("CA expired".into())))
        }
        Err(e) => {
            tracing::warn!(error = %e, "stored CA is unusable; generating a new one (every certificate is reissued)");
            Ok((Authority::generate()?, Action::Renewed(e.to_string())))
        }
    }
}

fn ca_entries(ca: &KeyedCert) -> Entries {
    [
        (CA_CRT.to_string(), ca.cert_pem.clone()),
        (CA_KEY.to_string(), ca.key_pem.clone()),
    ]
    .into()
}

fn leaf_entries(leaf: &KeyedCert, ca_pem: &str) -> Entries {
    [
        (TLS_CRT.to_string(), leaf.cert_pem.clone()),
        (TLS_KEY.to_string(), leaf.key_pem.clone()),
        (CA_CRT.to_string(), ca_pem.to_string()),
    ]
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaf::{DEFAULT_RENEW_WITHIN_SECS, standard};
    use crate::store::Files;

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn actions(s: &Summary) -> Vec<Action> {
        s.bundles.iter().map(|b| b.action.clone()).collect()
    }

    #[tokio::test]
    async fn creates_then_keeps_then_renews() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path());
        let specs = standard("fast-sandbox-system");
        let first = ensure(&files, &specs, now(), DEFAULT_RENEW_WITHIN_SECS)
            .await
            .unwrap();
        assert_eq!(actions(&first), vec![Action::Created; 8]);
        assert!(files.path("fast-sandbox-webhook-tls", "tls.crt").exists());

        let second = ensure(&files, &specs, now(), DEFAULT_RENEW_WITHIN_SECS)
            .await
            .unwrap();
        assert_eq!(actions(&second), vec![Action::Kept; 8]);
        assert_eq!(second.authority.cert_pem(), first.authority.cert_pem());

        // SANs changed for one: only that one is renewed, with the same CA.
        let mut changed = specs.clone();
        changed[0].dns_names.push("extra.example".into());
        let third = ensure(&files, &changed, now(), DEFAULT_RENEW_WITHIN_SECS)
            .await
            .unwrap();
        assert_eq!(
            third.bundles[1].action,
            Action::Renewed("subject alternative names changed".into())
        );
        assert_eq!(third.bundles[2].action, Action::Kept);

        // A year on, every leaf is due; the CA is kept.
        let later = now() + 340 * 86_400;
        let fourth = ensure(&files, &changed, later, DEFAULT_RENEW_WITHIN_SECS)
            .await
            .unwrap();
        assert_eq!(fourth.bundles[0].action, Action::Kept);
        assert!(
            fourth.bundles[1..]
                .iter()
                .all(|b| matches!(b.action, Action::Renewed(_)))
        );
    }

    #[tokio::test]
    async fn broken_ca_is_replaced_and_leaves_follow() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path());
        let specs = standard("ns");
        ensure(&files, &specs, now(), DEFAULT_RENEW_WITHIN_SECS)
            .await
            .unwrap();
        std::fs::write(files.path(CA_SECRET, CA_KEY), "garbage").unwrap();
        let s = ensure(&files, &specs, now(), DEFAULT_RENEW_WITHIN_SECS)
            .await
            .unwrap();
        assert!(matches!(s.bundles[0].action, Action::Renewed(_)));
        assert!(
            s.bundles[1..]
                .iter()
                .all(|b| b.action == Action::Renewed("not signed by the current CA".into()))
        );
    }
}
