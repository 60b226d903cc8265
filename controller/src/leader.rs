//! Leader election on a `coordination.k8s.io/v1` Lease. Only the holder
//! reconciles; the others wait, ready to take over when the lease is not
//! renewed within its duration. Every write is a compare-and-swap on the
//! lease's resourceVersion, so two replicas never both believe they lead
//! from the same lease state.
//!
//! As in client-go, expiry is judged by this replica's own clock only: a
//! follower takes the lease once the lease record has not changed for the
//! lease duration since it *observed* it, never by comparing the holder's
//! `renewTime` with the local time (clocks of two machines disagree). Every
//! round is bounded by a timeout, so a call that hangs cannot keep a leader
//! leading past its renew deadline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

impl Timing {
    /// The longest one round may take: a hung call ends well before the
    /// renew deadline, so a leader notices it could not renew in time.
    pub fn round_timeout(&self) -> Duration {
        (self.renew_deadline / 2).max(Duration::from_millis(100))
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

/// The parts of a lease record that change when its holder renews or
/// someone takes it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    holder: Option<String>,
    renew: Option<i64>,
    acquire: Option<i64>,
    transitions: Option<i32>,
    duration: Option<i32>,
}

impl Record {
    /// The record of `spec`.
    pub fn of(spec: &LeaseSpec) -> Self {
        Record {
            holder: spec.holder_identity.clone(),
            renew: spec.renew_time.as_ref().map(|t| t.0.as_microsecond()),
            acquire: spec.acquire_time.as_ref().map(|t| t.0.as_microsecond()),
            transitions: spec.lease_transitions,
            duration: spec.lease_duration_seconds,
        }
    }
}

/// A lease record as this replica last saw it, and when (its own clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The record.
    pub record: Record,
    /// When it was first seen unchanged.
    pub since: Instant,
}

/// Decides from the lease spec, our identity, what we observed before and
/// our own clock; returns the decision and the observation to keep.
pub fn decide(
    spec: &LeaseSpec,
    me: &str,
    last: Option<&Observation>,
    now: Instant,
) -> (Decision, Observation) {
    let record = Record::of(spec);
    let since = match last {
        Some(o) if o.record == record => o.since,
        _ => now,
    };
    let observation = Observation {
        record: record.clone(),
        since,
    };
    let decision = match spec.holder_identity.as_deref() {
        Some(h) if h == me => Decision::Renew,
        None | Some("") => Decision::Take,
        Some(_) => {
            let duration = Duration::from_secs(u64::from(
                spec.lease_duration_seconds.unwrap_or(15).max(1) as u32,
            ));
            if now.saturating_duration_since(since) >= duration {
                Decision::Take
            } else {
                Decision::Follow
            }
        }
    };
    (decision, observation)
}

/// One replica's candidacy for the lease.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    observed: Arc<Mutex<Option<Observation>>>,
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
            observed: Arc::new(Mutex::new(None)),
        }
    }

    /// This replica's identity in the lease.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn observe(&self, o: Option<Observation>) {
        *self.observed.lock().unwrap_or_else(|p| p.into_inner()) = o;
    }

    /// One round: acquires or renews the lease if possible. `Ok(true)` when
    /// we hold it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let wall = Utc::now();
        let now = Instant::now();
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
                    acquire_time: Some(micro(wall)),
                    renew_time: Some(micro(wall)),
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
        let last = self
            .observed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (decision, observation) = decide(&spec, &self.identity, last.as_ref(), now);
        self.observe(Some(observation));
        match decision {
            Decision::Follow => return Ok(false),
            Decision::Renew => {
                spec.renew_time = Some(micro(wall));
                spec.lease_duration_seconds = Some(duration);
            }
            Decision::Take => {
                spec.holder_identity = Some(self.identity.clone());
                spec.acquire_time = Some(micro(wall));
                spec.renew_time = Some(micro(wall));
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
            Ok(written) => {
                if let Some(spec) = written.spec.as_ref() {
                    self.observe(Some(Observation {
                        record: Record::of(spec),
                        since: now,
                    }));
                }
                Ok(true)
            }
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
        let mut last_renew: Option<Instant> = None;
        loop {
            let leading = *tx.borrow();
            let round =
                tokio::time::timeout(self.timing.round_timeout(), self.try_acquire_or_renew());
            let held = match round.await {
                Ok(Ok(h)) => {
                    if h {
                        last_renew = Some(Instant::now());
                    }
                    h
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", self.timing.round_timeout()),
                    };
                    tracing::warn!(error = %why, "leader lease round failed");
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
        let (d, _) = decide(&spec(Some("me"), 0), "me", None, Instant::now());
        assert_eq!(d, Decision::Renew);
    }

    #[test]
    fn a_foreign_lease_expires_by_our_clock_since_we_saw_it_unchanged() {
        let start = Instant::now();
        let lease = spec(Some("other"), 0);
        let (d, seen) = decide(&lease, "me", None, start);
        assert_eq!(d, Decision::Follow, "first sight: wait a whole duration");
        let (d, seen) = decide(&lease, "me", Some(&seen), start + Duration::from_secs(14));
        assert_eq!(d, Decision::Follow);
        assert_eq!(seen.since, start);
        let (d, _) = decide(&lease, "me", Some(&seen), start + Duration::from_secs(15));
        assert_eq!(d, Decision::Take);
    }

    #[test]
    fn a_renewal_restarts_the_wait_whatever_the_clocks_say() {
        let start = Instant::now();
        // The holder's clock runs an hour behind ours: its renewTime looks
        // long expired, yet it renews, so the lease stays its.
        let (_, seen) = decide(&spec(Some("other"), -3600), "me", None, start);
        let later = start + Duration::from_secs(10);
        let (d, seen) = decide(&spec(Some("other"), -3590), "me", Some(&seen), later);
        assert_eq!(d, Decision::Follow);
        assert_eq!(seen.since, later);
        let (d, _) = decide(
            &spec(Some("other"), -3590),
            "me",
            Some(&seen),
            later + Duration::from_secs(14),
        );
        assert_eq!(d, Decision::Follow);
        // And a holder an hour ahead does not keep a dead lease alive.
        let (_, seen) = decide(&spec(Some("dead"), 3600), "me", None, start);
        let (d, _) = decide(
            &spec(Some("dead"), 3600),
            "me",
            Some(&seen),
            start + Duration::from_secs(15),
        );
        assert_eq!(d, Decision::Take);
    }

    #[test]
    fn released_lease_is_taken_at_once() {
        let now = Instant::now();
        assert_eq!(decide(&spec(None, 0), "me", None, now).0, Decision::Take);
        assert_eq!(
            decide(&spec(Some(""), 0), "me", None, now).0,
            Decision::Take
        );
    }

    #[test]
    fn a_round_ends_well_before_the_renew_deadline() {
        let t = Timing::default();
        assert!(t.round_timeout() < t.renew_deadline);
        assert!(t.renew_deadline < t.lease_duration);
    }
}
