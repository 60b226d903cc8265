//! The controller of Fast Sandbox.
//!
//! - The pool controller ([`pool_controller`]) keeps each SandboxPool's agent
//!   pods warm, creating and deleting pods directly by a pure scale plan
//!   ([`scale`]) and building each pod from the pool's template
//!   ([`agent_pod`]).
//! - The sandbox controller ([`sandbox_controller`]) turns every bound
//!   Sandbox into a container on its agent over HTTPS with mutual TLS
//!   (`fast-sandbox-agent-client`), follows each agent's event stream ([`agents`]) and
//!   mirrors it into the status by pure transitions ([`transition`]); it
//!   deletes expired sandboxes at their instant ([`expiry`]) and re-places
//!   sandboxes whose agent refused or died with the webhook's placement
//!   index.
//! - The node janitor ([`janitor`]) has an agent collect the containers
//!   that deleted agent pods left in their node's containerd.
//! - Only the holder of a Lease reconciles ([`leader`]); each leadership
//!   term rebuilds everything from the API and the agents ([`term`]).
#![forbid(unsafe_code)]
#![deny(missing_docs, rust_2018_idioms)]

pub mod agent_pod;
pub mod agent_sizing;
pub mod agents;
pub mod context;
pub mod error;
pub mod expiry;
pub mod finalizer;
pub mod janitor;
pub mod leader;
pub mod metrics;
pub mod pool_controller;
pub mod sandbox_controller;
pub mod scale;
pub mod term;
pub mod time;
pub mod transition;

use std::future::Future;

use futures::FutureExt;
use tokio::sync::watch;

pub use error::Error;

/// Runs the controller until `shutdown` resolves: campaigns for the lease
/// and runs a [`term`] each time this replica becomes leader. Followers
/// report ready; a leader reports ready once its caches are synced.
pub async fn run(
    components: term::Components,
    elector: leader::Elector,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (lead_tx, lead_rx) = watch::channel(false);
    let candidacy = tokio::spawn(elector.clone().run(lead_tx));
    let shutdown = shutdown.boxed().shared();
    components.health.set_ready(true);
    loop {
        let mut rx = lead_rx.clone();
        tokio::select! {
            r = rx.wait_for(|leading| *leading) => if r.is_err() { break },
            _ = shutdown.clone() => break,
        }
        components.metrics.leader.set(1);
        let stop = {
            let mut rx = lead_rx.clone();
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    _ = rx.wait_for(|leading| !*leading) => {}
                    _ = shutdown => {}
                }
            }
            .boxed()
            .shared()
        };
        term::run(&components, stop).await;
        components.metrics.leader.set(0);
        components.health.set_ready(true);
        if shutdown.peek().is_some() {
            break;
        }
    }
    candidacy.abort();
    elector.release().await;
}
