//! Sandbox status transitions: from what the agent reports (or what the
//! controller decided) and the current status, the next status. Pure; the
//! reconciler writes the result only when it differs from what is stored.
//!
//! Conditions follow Kubernetes conventions: `Scheduled` is true once the
//! sandbox is bound to an agent, `Ready` is true while its process runs, and
//! a condition's `lastTransitionTime` moves only when its status changes.

use chrono::{DateTime, Utc};
use fast_sandbox_api::agent::{ContainerState, EventKind, SandboxEvent, SandboxInfo};
use fast_sandbox_api::wellknown::{condition, reason};
use fast_sandbox_api::{SandboxPhase, SandboxStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::time::to_k8s;

/// Sets (or replaces) the condition `type_`, keeping its transition time
/// when the status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let existing = conditions.iter().position(|c| c.type_ == type_);
    let last_transition_time = match existing.map(|i| &conditions[i]) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => to_k8s(now),
    };
    let c = Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
    };
    match existing {
        Some(i) => conditions[i] = c,
        None => conditions.push(c),
    }
}

/// Whether two statuses differ in anything but condition timestamps of
/// unchanged conditions (which `set_condition` already preserves).
pub fn changed(old: Option<&SandboxStatus>, new: &SandboxStatus) -> bool {
    old != Some(new)
}

/// Moves `s` to `phase` for `why`; `message` replaces the old one.
fn enter(
    s: &mut SandboxStatus,
    phase: SandboxPhase,
    why: &str,
    message: Option<&str>,
    generation: Option<i64>,
) {
    s.phase = Some(phase);
    s.reason = Some(why.to_string());
    s.message = message.map(str::to_string);
    s.observed_generation = generation;
}

/// Sets the Ready condition.
fn ready(
    s: &mut SandboxStatus,
    ok: bool,
    why: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    set_condition(
        &mut s.conditions,
        condition::READY,
        ok,
        why,
        message,
        generation,
        now,
    );
}

/// Status of a sandbox that waits without an agent.
pub fn unbound(
    current: &SandboxStatus,
    why: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> SandboxStatus {
    let mut s = current.clone();
    enter(
        &mut s,
        SandboxPhase::Pending,
        why,
        Some(message),
        generation,
    );
    s.node_name = None;
    s.container_id = None;
    set_condition(
        &mut s.conditions,
        condition::SCHEDULED,
        false,
        why,
        message,
        generation,
        now,
    );
    ready(&mut s, false, why, message, generation, now);
    s
}

/// Status of a sandbox bound to an agent whose container is being created.
pub fn bound(
    current: &SandboxStatus,
    pod: &str,
    node: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> SandboxStatus {
    let mut s = current.clone();
    if matches!(
        s.phase,
        None | Some(SandboxPhase::Pending) | Some(SandboxPhase::Lost)
    ) {
        s.phase = Some(SandboxPhase::Bound);
        s.reason = Some(reason::CREATING.to_string());
        s.message = None;
    }
    s.node_name = (!node.is_empty()).then(|| node.to_string());
    s.observed_generation = generation;
    let msg = format!("bound to agent {pod}");
    set_condition(
        &mut s.conditions,
        condition::SCHEDULED,
        true,
        reason::BOUND,
        &msg,
        generation,
        now,
    );
    if s.phase == Some(SandboxPhase::Bound) {
        ready(&mut s, false, reason::CREATING, "", generation, now);
    }
    s
}

/// Status from what the agent reports about the sandbox's container.
pub fn from_info(
    current: &SandboxStatus,
    info: &SandboxInfo,
    pod: &str,
    node: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> SandboxStatus {
    let mut s = bound(current, pod, node, generation, now);
    s.container_id = (!info.container_id.is_empty()).then(|| info.container_id.clone());
    s.observed_reset_revision = Some(info.reset_revision);
    s.endpoints = info.endpoints.clone();
    match info.state {
        ContainerState::Created => {
            enter(
                &mut s,
                SandboxPhase::Bound,
                reason::CREATING,
                None,
                generation,
            );
            s.exit_code = None;
            s.finished_at = None;
            ready(&mut s, false, reason::CREATING, "", generation, now);
        }
        ContainerState::Running => {
            enter(
                &mut s,
                SandboxPhase::Running,
                reason::STARTED,
                None,
                generation,
            );
            s.started_at = Some(to_k8s(info.started_at.unwrap_or(now)));
            s.exit_code = None;
            s.finished_at = None;
            ready(&mut s, true, reason::STARTED, "", generation, now);
        }
        ContainerState::Exited => {
            let code = info.exit_code.unwrap_or(-1);
            let why = exit_reason(info);
            let ok = code == 0 && why == reason::COMPLETED;
            let phase = if ok {
                SandboxPhase::Succeeded
            } else {
                SandboxPhase::Failed
            };
            let msg = format!("exited with code {code}");
            enter(&mut s, phase, &why, Some(&msg), generation);
            s.exit_code = Some(code);
            if let Some(t) = info.started_at {
                s.started_at = Some(to_k8s(t));
            }
            s.finished_at = Some(to_k8s(info.finished_at.unwrap_or(now)));
            ready(&mut s, false, &why, &msg, generation, now);
        }
        ContainerState::Unknown => {}
    }
    s
}

/// The reason of an exited container: the agent's, else derived from the
/// exit code.
pub fn exit_reason(info: &SandboxInfo) -> String {
    match &info.reason {
        Some(r) if !r.is_empty() => r.clone(),
        _ if info.exit_code == Some(0) => reason::COMPLETED.to_string(),
        _ => reason::ERROR.to_string(),
    }
}

/// Status of a sandbox that will not run: the agent refused it for good
/// (image not present, invalid spec).
pub fn failed(
    current: &SandboxStatus,
    why: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> SandboxStatus {
    let mut s = current.clone();
    enter(&mut s, SandboxPhase::Failed, why, Some(message), generation);
    if s.finished_at.is_none() {
        s.finished_at = Some(to_k8s(now));
    }
    ready(&mut s, false, why, message, generation, now);
    s
}

/// Status of a sandbox whose agent is gone or unreachable.
pub fn lost(
    current: &SandboxStatus,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> SandboxStatus {
    let mut s = current.clone();
    enter(
        &mut s,
        SandboxPhase::Lost,
        reason::AGENT_LOST,
        Some(message),
        generation,
    );
    ready(&mut s, false, reason::AGENT_LOST, message, generation, now);
    s
}

/// A sandbox that failed or was lost while its pool was being deleted: the
/// pool's teardown stopped it, which says more than the bare exit code of a
/// kill (137) or a vanished agent.
pub fn stopped_by_pool_deletion(
    s: &mut SandboxStatus,
    pool: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    let blamed = match s.phase {
        Some(SandboxPhase::Failed) => s.reason.as_deref() == Some(reason::ERROR),
        Some(SandboxPhase::Lost) => s.reason.as_deref() == Some(reason::AGENT_LOST),
        _ => false,
    };
    if !blamed {
        return;
    }
    let message = match s.message.as_deref() {
        Some(m) if !m.is_empty() => {
            format!("pool {pool} was deleted and its agents stopped this sandbox ({m})")
        }
        _ => format!("pool {pool} was deleted and its agents stopped this sandbox"),
    };
    if let Some(phase) = s.phase {
        enter(s, phase, reason::POOL_DELETED, Some(&message), generation);
    }
    ready(s, false, reason::POOL_DELETED, &message, generation, now);
}

/// Status while the container is being removed from its agent.
pub fn terminating(
    current: &SandboxStatus,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> SandboxStatus {
    let mut s = current.clone();
    let message = s.message.take();
    enter(
        &mut s,
        SandboxPhase::Terminating,
        reason::TERMINATING,
        message.as_deref(),
        generation,
    );
    ready(&mut s, false, reason::TERMINATING, "", generation, now);
    s
}

/// What an event line says about its sandbox: the sandbox after the change,
/// or `None` when the container is gone (or the line is a heartbeat).
pub fn info_after_event(event: &SandboxEvent) -> Option<SandboxInfo> {
    let mut info = event.sandbox.clone()?;
    match event.kind {
        EventKind::Deleted | EventKind::Heartbeat => return None,
        EventKind::OomKilled => {
            info.state = ContainerState::Exited;
            info.reason = Some(reason::OOM_KILLED.to_string());
        }
        EventKind::Exited => info.state = ContainerState::Exited,
        EventKind::Started => {}
    }
    Some(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn info(state: ContainerState) -> SandboxInfo {
        SandboxInfo {
            uid: "u1".into(),
            name: "s".into(),
            namespace: "ns".into(),
            container_id: "c1".into(),
            image: "busybox".into(),
            state,
            started_at: Some(t(5)),
            ..Default::default()
        }
    }

    fn cond<'a>(s: &'a SandboxStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn running_container_makes_sandbox_running_and_ready() {
        let s = from_info(
            &SandboxStatus::default(),
            &info(ContainerState::Running),
            "agent-a",
            "node1",
            Some(1),
            t(6),
        );
        assert_eq!(s.phase, Some(SandboxPhase::Running));
        assert_eq!(s.container_id.as_deref(), Some("c1"));
        assert_eq!(s.node_name.as_deref(), Some("node1"));
        assert_eq!(s.started_at, Some(to_k8s(t(5))));
        assert_eq!(cond(&s, condition::READY).status, "True");
        assert_eq!(cond(&s, condition::SCHEDULED).status, "True");
        assert_eq!(s.observed_generation, Some(1));
    }

    #[test]
    fn exit_zero_is_succeeded_nonzero_failed_oom_failed() {
        let running = from_info(
            &SandboxStatus::default(),
            &info(ContainerState::Running),
            "a",
            "n",
            None,
            t(6),
        );

        let mut ok = info(ContainerState::Exited);
        ok.exit_code = Some(0);
        ok.finished_at = Some(t(9));
        let s = from_info(&running, &ok, "a", "n", None, t(10));
        assert_eq!(s.phase, Some(SandboxPhase::Succeeded));
        assert_eq!(s.reason.as_deref(), Some(reason::COMPLETED));
        assert_eq!(s.exit_code, Some(0));
        assert_eq!(s.finished_at, Some(to_k8s(t(9))));
        let ready = cond(&s, condition::READY);
        assert_eq!(ready.status, "False");
        assert_eq!(ready.last_transition_time, to_k8s(t(10)));

        let mut bad = info(ContainerState::Exited);
        bad.exit_code = Some(3);
        let s = from_info(&running, &bad, "a", "n", None, t(10));
        assert_eq!(s.phase, Some(SandboxPhase::Failed));
        assert_eq!(s.reason.as_deref(), Some(reason::ERROR));
        assert_eq!(s.exit_code, Some(3));

        let ev = SandboxEvent {
            seq: 1,
            kind: EventKind::OomKilled,
            at: t(10),
            sandbox: Some(SandboxInfo {
                exit_code: Some(137),
                ..info(ContainerState::Running)
            }),
        };
        let oom = info_after_event(&ev).unwrap();
        let s = from_info(&running, &oom, "a", "n", None, t(10));
        assert_eq!(s.phase, Some(SandboxPhase::Failed));
        assert_eq!(s.reason.as_deref(), Some(reason::OOM_KILLED));
        assert_eq!(s.exit_code, Some(137));
    }

    #[test]
    fn a_sandbox_its_pools_deletion_stopped_says_so() {
        let mut killed = info(ContainerState::Exited);
        killed.exit_code = Some(137);
        let mut s = from_info(&SandboxStatus::default(), &killed, "a", "n", None, t(1));
        stopped_by_pool_deletion(&mut s, "p", None, t(2));
        assert_eq!(s.phase, Some(SandboxPhase::Failed));
        assert_eq!(s.reason.as_deref(), Some(reason::POOL_DELETED));
        assert_eq!(
            s.message.as_deref(),
            Some("pool p was deleted and its agents stopped this sandbox (exited with code 137)")
        );
        assert_eq!(cond(&s, condition::READY).reason, reason::POOL_DELETED);
        let mut again = s.clone();
        stopped_by_pool_deletion(&mut again, "p", None, t(3));
        assert_eq!(again, s, "blamed once");

        let mut l = lost(
            &SandboxStatus::default(),
            "agent pod x was deleted",
            None,
            t(1),
        );
        stopped_by_pool_deletion(&mut l, "p", None, t(2));
        assert_eq!(
            (l.phase, l.reason.as_deref()),
            (Some(SandboxPhase::Lost), Some(reason::POOL_DELETED))
        );

        // What ended on its own keeps its own account.
        let mut done = info(ContainerState::Exited);
        done.exit_code = Some(0);
        let ok = from_info(&SandboxStatus::default(), &done, "a", "n", None, t(1));
        let mut o = ok.clone();
        stopped_by_pool_deletion(&mut o, "p", None, t(2));
        assert_eq!(o, ok);
        let mut oom = info(ContainerState::Exited);
        oom.reason = Some(reason::OOM_KILLED.into());
        let oom = from_info(&SandboxStatus::default(), &oom, "a", "n", None, t(1));
        let mut o = oom.clone();
        stopped_by_pool_deletion(&mut o, "p", None, t(2));
        assert_eq!(o, oom);
    }

    #[test]
    fn oom_with_exit_code_zero_is_still_failed() {
        let mut i = info(ContainerState::Exited);
        i.exit_code = Some(0);
        i.reason = Some(reason::OOM_KILLED.into());
        let s = from_info(&SandboxStatus::default(), &i, "a", "n", None, t(1));
        assert_eq!(s.phase, Some(SandboxPhase::Failed));
    }

    #[test]
    fn unchanged_condition_keeps_its_transition_time() {
        let a = from_info(
            &SandboxStatus::default(),
            &info(ContainerState::Running),
            "a",
            "n",
            None,
            t(6),
        );
        let b = from_info(&a, &info(ContainerState::Running), "a", "n", None, t(60));
        assert_eq!(
            cond(&b, condition::READY).last_transition_time,
            to_k8s(t(6))
        );
        assert!(!changed(Some(&a), &b));
    }

    #[test]
    fn unbound_sandbox_is_pending_not_scheduled() {
        let s = unbound(
            &SandboxStatus::default(),
            reason::NO_CAPACITY,
            "no free slot",
            Some(1),
            t(0),
        );
        assert_eq!(s.phase, Some(SandboxPhase::Pending));
        let c = cond(&s, condition::SCHEDULED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reason::NO_CAPACITY)
        );
        // Once bound: Scheduled flips, Ready waits for the container.
        let b = bound(&s, "agent-a", "node1", Some(1), t(1));
        assert_eq!(b.phase, Some(SandboxPhase::Bound));
        assert_eq!(cond(&b, condition::SCHEDULED).status, "True");
        assert_eq!(cond(&b, condition::READY).status, "False");
    }

    #[test]
    fn lost_sandbox_is_not_ready() {
        let r = from_info(
            &SandboxStatus::default(),
            &info(ContainerState::Running),
            "a",
            "n",
            None,
            t(6),
        );
        let l = lost(&r, "agent pod a is gone", None, t(9));
        assert_eq!(l.phase, Some(SandboxPhase::Lost));
        assert_eq!(l.reason.as_deref(), Some(reason::AGENT_LOST));
        assert_eq!(cond(&l, condition::READY).status, "False");
        // Re-placed and bound again: back to Bound.
        let b = bound(&l, "agent-b", "n2", None, t(10));
        assert_eq!(b.phase, Some(SandboxPhase::Bound));
    }

    #[test]
    fn deleted_and_heartbeat_events_carry_no_sandbox_state() {
        let mut ev = SandboxEvent {
            seq: 1,
            kind: EventKind::Deleted,
            at: t(0),
            sandbox: Some(info(ContainerState::Exited)),
        };
        assert!(info_after_event(&ev).is_none());
        ev.kind = EventKind::Heartbeat;
        ev.sandbox = None;
        assert!(info_after_event(&ev).is_none());
    }

    #[test]
    fn image_not_present_fails_the_sandbox() {
        let s = failed(
            &SandboxStatus::default(),
            reason::IMAGE_NOT_PRESENT,
            "not on node",
            None,
            t(2),
        );
        assert_eq!(s.phase, Some(SandboxPhase::Failed));
        assert_eq!(s.finished_at, Some(to_k8s(t(2))));
    }
}
