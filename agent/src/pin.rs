//! Keeping the kubelet's image garbage collection off images sandboxes
//! need. Pure decisions on an image's labels, no I/O; the agent applies
//! them (see `Agent::keep_images_pinned`).
//!
//! The kubelet sees only its own pods' containers, so to its image GC a
//! sandbox's image is unused, and under disk pressure (or past
//! `imageMaximumGCAge`) it would be removed: sandboxes already running keep
//! their snapshots, but every new one fails as `ImageNotPresent`. The
//! kubelet skips images the runtime reports pinned, and containerd's CRI
//! reports an image pinned when it carries the label
//! `io.cri-containerd.pinned=pinned`.
//!
//! Several agents of a node may need one image, so each agent marks the
//! images it needs with a label of its own (`sandbox.fast.io/in-use.<agent
//! UID>`), and the pin goes only with the last mark, and only if Fast
//! Sandbox put it there (`sandbox.fast.io/pinned`): an image the operator
//! pinned stays pinned. The janitor removes the marks of agents that are
//! gone.

use std::collections::HashMap;

/// containerd's CRI label that makes an image pinned.
pub const PINNED_LABEL: &str = "io.cri-containerd.pinned";
/// Its value.
pub const PINNED_VALUE: &str = "pinned";
/// Prefix of each agent's mark; the agent's pod UID follows.
pub const MARK_PREFIX: &str = "sandbox.fast.io/in-use.";
/// Set with the pin when Fast Sandbox pinned the image.
pub const OURS_LABEL: &str = "sandbox.fast.io/pinned";

/// Labels to set and to remove on one image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelChange {
    /// Labels to set, with their values.
    pub set: HashMap<String, String>,
    /// Labels to remove.
    pub remove: Vec<String>,
}

impl LabelChange {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// The mark of agent `agent`.
pub fn mark(agent: &str) -> String {
    format!("{MARK_PREFIX}{agent}")
}

/// The agents whose marks an image carries.
pub fn holders(labels: &HashMap<String, String>) -> Vec<&str> {
    let mut v: Vec<&str> = labels
        .keys()
        .filter_map(|k| k.strip_prefix(MARK_PREFIX))
        .collect();
    v.sort_unstable();
    v
}

/// What marks an image with `labels` as needed by `agent` and pins it;
/// `None` when it is already.
pub fn hold(labels: &HashMap<String, String>, agent: &str) -> Option<LabelChange> {
    let mut change = LabelChange::default();
    if !labels.contains_key(&mark(agent)) {
        change.set.insert(mark(agent), "true".into());
    }
    if labels.get(PINNED_LABEL).map(String::as_str) != Some(PINNED_VALUE) {
        change
            .set
            .insert(PINNED_LABEL.to_string(), PINNED_VALUE.to_string());
        change.set.insert(OURS_LABEL.to_string(), "true".into());
    }
    (!change.is_empty()).then_some(change)
}

/// What removes the marks of the agents `gone` says are done with an image
/// with `labels`, and its pin with the last mark if the pin is ours;
/// `None` when nothing changes.
pub fn release(
    labels: &HashMap<String, String>,
    gone: impl Fn(&str) -> bool,
) -> Option<LabelChange> {
    let all = holders(labels);
    let leaving: Vec<&str> = all.iter().copied().filter(|a| gone(a)).collect();
    if leaving.is_empty() {
        return None;
    }
    let mut change = LabelChange {
        remove: leaving.iter().map(|a| mark(a)).collect(),
        ..Default::default()
    };
    if leaving.len() == all.len() && labels.contains_key(OURS_LABEL) {
        change.remove.push(PINNED_LABEL.to_string());
        change.remove.push(OURS_LABEL.to_string());
    }
    Some(change)
}

/// What pins again an image some agent still holds whose pin a release
/// removed meanwhile (two agents releasing and holding at once); `None`
/// when it needs nothing.
pub fn repin(labels: &HashMap<String, String>) -> Option<LabelChange> {
    if holders(labels).is_empty()
        || labels.get(PINNED_LABEL).map(String::as_str) == Some(PINNED_VALUE)
    {
        return None;
    }
    Some(LabelChange {
        set: HashMap::from([
            (PINNED_LABEL.to_string(), PINNED_VALUE.to_string()),
            (OURS_LABEL.to_string(), "true".to_string()),
        ]),
        remove: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn apply(l: &mut HashMap<String, String>, c: &LabelChange) {
        for k in &c.remove {
            l.remove(k);
        }
        l.extend(c.set.clone());
    }

    #[test]
    fn the_pin_goes_with_the_last_agent_that_holds_it() {
        let mut l = labels(&[("other", "x")]);
        let c = hold(&l, "a").unwrap();
        apply(&mut l, &c);
        assert_eq!(l[PINNED_LABEL], PINNED_VALUE);
        assert_eq!(hold(&l, "a"), None, "held already");
        let b = hold(&l, "b").unwrap();
        assert_eq!(b.set.keys().collect::<Vec<_>>(), [&mark("b")], "{b:?}");
        apply(&mut l, &b);
        assert_eq!(holders(&l), ["a", "b"]);

        let c = release(&l, |a| a == "a").unwrap();
        apply(&mut l, &c);
        assert_eq!(l[PINNED_LABEL], PINNED_VALUE, "b still needs it");
        assert_eq!(release(&l, |a| a == "a"), None, "a holds nothing");
        let c = release(&l, |a| a == "b").unwrap();
        apply(&mut l, &c);
        assert_eq!(l, labels(&[("other", "x")]));
    }

    #[test]
    fn a_pin_fast_sandbox_did_not_set_stays() {
        let mut l = labels(&[(PINNED_LABEL, PINNED_VALUE)]);
        let c = hold(&l, "a").unwrap();
        assert!(!c.set.contains_key(OURS_LABEL), "{c:?}");
        apply(&mut l, &c);
        let c = release(&l, |_| true).unwrap();
        apply(&mut l, &c);
        assert_eq!(l, labels(&[(PINNED_LABEL, PINNED_VALUE)]));
    }

    #[test]
    fn a_pin_lost_to_a_concurrent_release_is_put_back() {
        // a read the image with no other holder and removed the pin while
        // b marked it.
        let raced = labels(&[(&mark("b"), "true")]);
        let c = repin(&raced).unwrap();
        assert_eq!(c.set[PINNED_LABEL], PINNED_VALUE);
        assert_eq!(repin(&labels(&[])), None, "nobody holds it");
        let pinned = labels(&[(&mark("b"), "true"), (PINNED_LABEL, PINNED_VALUE)]);
        assert_eq!(repin(&pinned), None);
    }

    #[test]
    fn a_changed_pin_value_is_set_back() {
        let l = labels(&[(PINNED_LABEL, "no"), (&mark("a"), "true")]);
        let c = hold(&l, "a").unwrap();
        assert_eq!(c.set[PINNED_LABEL], PINNED_VALUE);
    }
}
