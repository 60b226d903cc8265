//! Helpers for the end-to-end suite: a client for the cluster the suite
//! runs against, unique namespaces, and bounded waits on watched
//! conditions (never sleeps).
//!
//! The suite needs a cluster with Fast Sandbox deployed (`hack/test.sh`
//! brings `test/cluster` up, deploys, then runs it); without one every test
//! fails saying so. A plain `cargo test` leaves this crate out (it is not a
//! default member); `hack/test.sh` runs the rest of the workspace with
//! `--exclude fast-sandbox-e2e`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cluster;
pub mod containerd;
pub mod history;
pub mod scenario;

use std::fmt::Debug;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde_json::json;

/// Why an end-to-end step failed.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// The API answered with an error.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// A condition did not hold in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// The watch ended.
    #[error("watch failed: {0}")]
    Watch(String),
    /// A command-line tool (`ctr`, `kubectl`, `kill`) failed.
    #[error("{0}")]
    Command(String),
}

/// A client of the suite's cluster (the current kubeconfig). The suite
/// exists to run against a real cluster, so without one it fails, naming
/// what is missing, instead of passing quietly.
pub async fn cluster_client(test: &str) -> Client {
    match Client::try_default().await {
        Ok(c) => c,
        Err(e) => panic!(
            "{test}: no cluster is reachable ({e}); hack/test.sh brings the local cluster up and runs this suite"
        ),
    }
}

/// A client of the suite's cluster acting as `user` (impersonation), with
/// no group of its own beyond `system:authenticated`.
pub async fn impersonating(user: &str) -> Client {
    let mut cfg = kube::Config::infer().await.expect("the suite's kubeconfig");
    cfg.auth_info.impersonate = Some(user.to_string());
    // Built as `kubectl sandbox` builds its client: tenants act as users.
    fast_sandbox_cli::cluster::client(cfg).expect("an impersonating client")
}

/// Gives `user` the built-in `edit` role in `ns`, nothing more, and waits
/// (at most 30 s) until the apiserver's authorizer sees the binding: its
/// cache trails a new RoleBinding, and an aggregated API asks it too.
pub async fn editor(client: &Client, ns: &str, user: &str) -> Client {
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{user}-edit")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    }))
    .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {"user": user, "groups": ["system:authenticated"], "resourceAttributes": {
            "namespace": ns, "verb": "get", "group": "subresources.sandbox.fast.io",
            "resource": "sandboxes", "subresource": "log"}}
    }))
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .unwrap();
        if answer.status.is_some_and(|s| s.allowed) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user}'s edit role in {ns} not authorized after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    impersonating(user).await
}

/// Creates a namespace with a unique name for one test.
pub async fn namespace(client: &Client, prefix: &str) -> Result<String, E2eError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"generateName": format!("{prefix}-"), "labels": {"fast-sandbox-e2e": "true"}}
    }))
    .map_err(|e| E2eError::Watch(e.to_string()))?;
    let created = api.create(&PostParams::default(), &ns).await?;
    Ok(created.metadata.name.unwrap_or_default())
}

/// Deletes a test namespace (best effort: the suite's result must not hinge
/// on cleanup).
pub async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
}

/// Watches `api` until `pred` holds for the object named `name`, or fails
/// after `timeout` naming `what`.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&K) -> bool,
) -> Result<K, E2eError>
where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api.clone(), cfg).default_backoff();
    let fut = async {
        let mut stream = std::pin::pin!(stream);
        let mut last: Option<K> = None;
        while let Some(ev) = stream
            .try_next()
            .await
            .map_err(|e| E2eError::Watch(e.to_string()))?
        {
            let objs: Vec<K> = match ev {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => vec![o],
                _ => vec![],
            };
            for o in objs {
                if pred(&o) {
                    return Ok(o);
                }
                last = Some(o);
            }
        }
        Err(E2eError::Watch(format!("watch ended; last seen {last:?}")))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| E2eError::Timeout(timeout, format!("{what} ({name})")))?
}

/// Watches `api` until no object named `name` exists.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, timeout: Duration) -> Result<(), E2eError>
where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let fut = async {
        let mut present = true;
        let mut stream = std::pin::pin!(watcher(api.clone(), cfg).default_backoff());
        while let Some(ev) = stream.next().await {
            match ev.map_err(|e| E2eError::Watch(e.to_string()))? {
                watcher::Event::Delete(_) => return Ok(()),
                watcher::Event::Init => present = false,
                watcher::Event::InitApply(_) => present = true,
                watcher::Event::InitDone if !present => return Ok(()),
                _ => {}
            }
        }
        Err(E2eError::Watch("watch ended".into()))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| E2eError::Timeout(timeout, format!("deletion of {name}")))?
}

/// Watches the objects of `api` matching `labels` until `pred` holds for
/// the whole set, or fails after `timeout` naming `what`.
pub async fn wait_for_set<K>(
    api: &Api<K>,
    labels: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&[std::sync::Arc<K>]) -> bool,
) -> Result<Vec<std::sync::Arc<K>>, E2eError>
where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = kube::runtime::reflector::store();
    let cfg = watcher::Config::default().labels(labels);
    let stream = kube::runtime::reflector(writer, watcher(api.clone(), cfg).default_backoff());
    let fut = async {
        let mut stream = std::pin::pin!(stream);
        let mut synced = false;
        while let Some(ev) = stream.next().await {
            if let watcher::Event::InitDone = ev.map_err(|e| E2eError::Watch(e.to_string()))? {
                synced = true;
            }
            let state = reader.state();
            if synced && pred(&state) {
                return Ok(state);
            }
        }
        Err(E2eError::Watch("watch ended".into()))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| E2eError::Timeout(timeout, format!("{what} ({labels})")))?
}
