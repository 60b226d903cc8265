//! Authorisation of a user the apiserver authenticated, by the cluster's
//! own RBAC (or whatever authoriser it runs): a SubjectAccessReview per
//! distinct question, with answers cached for a few seconds so a burst of
//! execs by one user costs one review.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::cluster_trust::UserInfo;

/// How long an allow is reused (as kube-apiserver's webhook authoriser
/// caches an authorised answer).
pub const ALLOW_TTL: Duration = Duration::from_secs(10);
/// How long a deny is reused: short, so a role just granted works almost at
/// once.
pub const DENY_TTL: Duration = Duration::from_secs(2);
/// Answers kept at most; the cache is cleared when full.
const MAX_CACHED: usize = 10_000;

/// One question: may the user do `verb` on `resource/subresource` named
/// `name` in `namespace` of `group`?
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Question {
    /// API group (`subresources.sandbox.fast.io`).
    pub group: String,
    /// Resource (`sandboxes`).
    pub resource: String,
    /// Subresource (`log`, `exec`, `files`).
    pub subresource: String,
    /// Verb (`get`, `create`).
    pub verb: String,
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
}

/// The authoriser's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The authoriser's reason, if it gave one.
    pub reason: String,
}

/// Why no answer could be had.
#[derive(Debug, thiserror::Error)]
#[error("SubjectAccessReview failed: {0}")]
pub struct ReviewError(#[from] kube::Error);

/// Asks the apiserver whether users may do things.
pub struct Authorizer {
    client: Client,
    cache: Mutex<HashMap<(UserInfo, Question), (Decision, Instant)>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

impl Authorizer {
    /// Reviews with `client` (which needs `create` on
    /// `subjectaccessreviews`, as `system:auth-delegator` grants).
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `user` may do what `q` asks.
    pub async fn review(&self, user: &UserInfo, q: &Question) -> Result<Decision, ReviewError> {
        let key = (user.clone(), q.clone());
        if let Some((d, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            let ttl = if d.allowed { ALLOW_TTL } else { DENY_TTL };
            if at.elapsed() < ttl {
                return Ok(d.clone());
            }
        }
        let review = SubjectAccessReview {
            spec: spec(user, q),
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), &review).await?;
        let status = answer.status.unwrap_or_default();
        let decision = Decision {
            allowed: status.allowed && !status.denied.unwrap_or(false),
            reason: status.reason.unwrap_or_default(),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, (decision.clone(), Instant::now()));
        Ok(decision)
    }
}

/// The review's spec for `user` asking `q`.
pub fn spec(user: &UserInfo, q: &Question) -> SubjectAccessReviewSpec {
    SubjectAccessReviewSpec {
        user: Some(user.username.clone()),
        uid: user.uid.clone(),
        groups: Some(user.groups.clone()),
        extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
        resource_attributes: Some(ResourceAttributes {
            group: Some(q.group.clone()),
            resource: Some(q.resource.clone()),
            subresource: Some(q.subresource.clone()),
            verb: Some(q.verb.clone()),
            namespace: Some(q.namespace.clone()),
            name: Some(q.name.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_review_carries_the_user_and_the_subresource() {
        let user = UserInfo {
            username: "alice".into(),
            uid: Some("1".into()),
            groups: vec!["devs".into()],
            extra: [("scopes".to_string(), vec!["x".to_string()])].into(),
        };
        let q = Question {
            group: "subresources.sandbox.fast.io".into(),
            resource: "sandboxes".into(),
            subresource: "log".into(),
            verb: "get".into(),
            namespace: "team".into(),
            name: "sb".into(),
        };
        let s = spec(&user, &q);
        assert_eq!(s.user.as_deref(), Some("alice"));
        assert_eq!(s.groups.as_deref(), Some(&["devs".to_string()][..]));
        let ra = s.resource_attributes.unwrap();
        assert_eq!(ra.subresource.as_deref(), Some("log"));
        assert_eq!(ra.namespace.as_deref(), Some("team"));
        assert_eq!(ra.group.as_deref(), Some("subresources.sandbox.fast.io"));
    }
}
