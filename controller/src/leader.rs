//! Leader election on a `coordination.k8s.io/v1` Lease. Only the holder
//! reconciles; the others wait, ready to take over when the lease is not
//! renewed within its duration. Every write is a compare-and-swap on the
//! lease's resourceVersion, so two replicas never both believe they lead
//! from the same lease state.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

/// Lease timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_interval: Duration,
    /// A leader that could not renew for this long stops leading (before the
    /// lease expires and another replica may take it).
    pub renew_deadline: Duration,
    /// How often a follower checks whether the lease is free.
    pub retry_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
            retry_interval: Duration::from_secs(2),
        }
    }
}

/// What to do with the lease as it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it.
    Take,
    /// Someone else holds a valid lease.
    Follow,
}

fn micro(t: DateTime<Utc>) -> MicroTime {
    MicroTime(Timestamp::from_microsecond(t.timestamp_micros()).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn from_micro(t: &MicroTime) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.0.as_microsecond()).unwrap_or_default()
}

/// Decides from the lease spec, our identity and the time.
pub fn decide(spec: &LeaseSpec, me: &str, now: DateTime<Utc>) -> Decision {
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Decision::Renew,
        None | Some("") => Decision::Take,
        Some(_) => {
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(from_micro);
            let duration =
                chrono::Duration::seconds(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            match renewed {
                Some(t) if t + duration > now => Decision::Follow,
                _ => Decision::Take,
            }
        }
    }
}

/// One replica's candidacy for the lease.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish()
    }
}

impl Elector {
    /// A candidate for lease `name` in the namespace of `api`.
    pub fn new(
        api: Api<Lease>,
        name: impl Into<String>,
        identity: impl Into<String>,
        timing: Timing,
    ) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            timing,
        }
    }

    /// This replica's identity in the lease.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One round: acquires or renews the lease if possible. `Ok(true)` when
    /// we hold it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Utc::now();
        let duration = self.timing.lease_duration.as_secs() as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(micro(now)),
                    renew_time: Some(micro(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        match decide(&spec, &self.identity, now) {
            Decision::Follow => return Ok(false),
            Decision::Renew => {
                spec.renew_time = Some(micro(now));
                spec.lease_duration_seconds = Some(duration);
            }
            Decision::Take => {
                spec.holder_identity = Some(self.identity.clone());
                spec.acquire_time = Some(micro(now));
                spec.renew_time = Some(micro(now));
                spec.lease_duration_seconds = Some(duration);
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (on shutdown) so another replica takes over at
    /// once instead of after the lease duration.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::debug!(error = %e, "cannot release the leader lease");
        }
    }

    /// Runs the candidacy forever, publishing whether we lead on `tx`.
    pub async fn run(self, tx: watch::Sender<bool>) {
        let mut last_renew: Option<std::time::Instant> = None;
        loop {
            let leading = *tx.borrow();
            let held = match self.try_acquire_or_renew().await {
                Ok(h) => {
                    if h {
                        last_renew = Some(std::time::Instant::now());
                    }
                    h
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader lease round failed");
                    // Keep leading through short API hiccups, but stop
                    // before the lease can expire under us.
                    leading && last_renew.is_some_and(|t| t.elapsed() < self.timing.renew_deadline)
                }
            };
            if held != leading {
                if held {
                    tracing::info!(identity = %self.identity, lease = %self.name, "became leader");
                } else {
                    tracing::warn!(identity = %self.identity, lease = %self.name, "lost leadership");
                    last_renew = None;
                }
                let _ = tx.send(held);
            }
            let pause = if held {
                self.timing.renew_interval
            } else {
                self.timing.retry_interval
            };
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn spec(holder: Option<&str>, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: Some(micro(t(renewed))),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    #[test]
    fn own_lease_is_renewed() {
        assert_eq!(decide(&spec(Some("me"), 0), "me", t(100)), Decision::Renew);
    }

    #[test]
    fn valid_foreign_lease_is_respected_until_it_expires() {
        assert_eq!(
            decide(&spec(Some("other"), 0), "me", t(14)),
            Decision::Follow
        );
        assert_eq!(decide(&spec(Some("other"), 0), "me", t(15)), Decision::Take);
    }

    #[test]
    fn released_lease_is_taken_at_once() {
        assert_eq!(decide(&spec(None, 0), "me", t(1)), Decision::Take);
        assert_eq!(decide(&spec(Some(""), 0), "me", t(1)), Decision::Take);
    }

    #[test]
    fn micro_time_round_trips() {
        let now = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        assert_eq!(from_micro(&micro(now)), now);
    }
}
