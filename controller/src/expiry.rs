//! When a sandbox is due for deletion: at `spec.expireTime`, or
//! `ttlSecondsAfterFinished` after it finished. The reconciler requeues at
//! that exact instant instead of scanning periodically.

use chrono::{DateTime, Duration, Utc};
use fast_sandbox_api::Sandbox;

use crate::time::from_k8s;

/// The instant the sandbox must be deleted, if any.
pub fn deadline(sandbox: &Sandbox) -> Option<DateTime<Utc>> {
    if let Some(t) = &sandbox.spec.expire_time {
        return Some(from_k8s(t));
    }
    let ttl = sandbox.spec.ttl_seconds_after_finished?;
    if !sandbox.phase().is_finished() {
        return None;
    }
    let finished = sandbox.status.as_ref()?.finished_at.as_ref()?;
    // Checked: a TTL stored before admission bounded it must not panic the
    // controller; one past the end of time is never.
    from_k8s(finished).checked_add_signed(Duration::try_seconds(ttl.max(0))?)
}

/// How long until `at`, zero when it passed.
pub fn wait_until(at: DateTime<Utc>, now: DateTime<Utc>) -> std::time::Duration {
    (at - now).to_std().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::to_k8s;
    use fast_sandbox_api::{SandboxPhase, SandboxSpec, SandboxStatus};

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn sandbox(spec: SandboxSpec, status: Option<SandboxStatus>) -> Sandbox {
        let mut s = Sandbox::new("s", spec);
        s.status = status;
        s
    }

    #[test]
    fn expire_time_is_the_deadline_whatever_the_phase() {
        let s = sandbox(
            SandboxSpec {
                expire_time: Some(to_k8s(t(30))),
                ..Default::default()
            },
            None,
        );
        assert_eq!(deadline(&s), Some(t(30)));
    }

    #[test]
    fn a_ttl_past_the_end_of_time_is_never() {
        let done = SandboxStatus {
            phase: Some(SandboxPhase::Succeeded),
            finished_at: Some(to_k8s(t(100))),
            ..Default::default()
        };
        for ttl in [i64::MAX, i64::MAX / 1000, 8_300_000_000_000] {
            let spec = SandboxSpec {
                ttl_seconds_after_finished: Some(ttl),
                ..Default::default()
            };
            assert_eq!(deadline(&sandbox(spec, Some(done.clone()))), None, "{ttl}");
        }
    }

    #[test]
    fn ttl_counts_from_finish() {
        let spec = SandboxSpec {
            ttl_seconds_after_finished: Some(10),
            ..Default::default()
        };
        let running = SandboxStatus {
            phase: Some(SandboxPhase::Running),
            ..Default::default()
        };
        assert_eq!(deadline(&sandbox(spec.clone(), Some(running))), None);
        let done = SandboxStatus {
            phase: Some(SandboxPhase::Failed),
            finished_at: Some(to_k8s(t(100))),
            ..Default::default()
        };
        assert_eq!(deadline(&sandbox(spec.clone(), Some(done))), Some(t(110)));
        let zero = SandboxSpec {
            ttl_seconds_after_finished: Some(0),
            ..spec
        };
        let done = SandboxStatus {
            phase: Some(SandboxPhase::Succeeded),
            finished_at: Some(to_k8s(t(100))),
            ..Default::default()
        };
        assert_eq!(deadline(&sandbox(zero, Some(done))), Some(t(100)));
    }

    #[test]
    fn no_expiry_fields_no_deadline() {
        assert_eq!(deadline(&sandbox(SandboxSpec::default(), None)), None);
    }

    #[test]
    fn wait_is_exact_and_never_negative() {
        assert_eq!(wait_until(t(10), t(7)), std::time::Duration::from_secs(3));
        assert_eq!(wait_until(t(7), t(10)), std::time::Duration::ZERO);
    }
}
