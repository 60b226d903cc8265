//! containerd's event stream, subscribed so that no event is missed from
//! the moment the subscription returns.

use std::time::Duration;

use chrono::Utc;
use containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use containerd_client::types::Envelope;
use tokio::sync::mpsc;

use super::Containerd;
use crate::error::{Error, Result};
/// Topic of the marker event that proves an event subscription is live.
pub const SYNC_TOPIC: &str = "/fast-sandbox/agent/sync";
/// Type URL of the marker event.
const SYNC_TYPE_URL: &str = "types.fast.io/agent/sync";
/// The marker is published again after this long without coming back.
const SYNC_RESEND: Duration = Duration::from_millis(100);
/// A subscription that does not go live within this long is an error.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

impl Containerd {
    /// Subscribes to containerd events whose topic is one of `topics`, in
    /// this namespace, and returns once the subscription is live.
    ///
    /// containerd sends no response headers on a subscription until the
    /// first event, so the call runs in its own task and the agent publishes
    /// a marker event on [`SYNC_TOPIC`] until it comes back through the
    /// stream: from then on no event can be missed.
    pub async fn subscribe(
        &self,
        topics: &[&str],
    ) -> Result<mpsc::Receiver<std::result::Result<Envelope, tonic::Status>>> {
        let filters = topics
            .iter()
            .chain([&SYNC_TOPIC])
            .map(|t| format!("namespace=={},topic==\"{t}\"", self.namespace_name))
            .collect();
        let (tx, mut rx) = mpsc::channel(1024);
        let mut events = self.client.events();
        tokio::spawn(async move {
            let mut stream = match events.subscribe(SubscribeRequest { filters }).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    let _ = tx.send(Err(s)).await;
                    return;
                }
            };
            loop {
                tokio::select! {
                    msg = stream.message() => match msg {
                        Ok(Some(env)) => {
                            if tx.send(Ok(env)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(s) => {
                            let _ = tx.send(Err(s)).await;
                            return;
                        }
                    },
                    () = tx.closed() => return,
                }
            }
        });
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or(0)
        );
        let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
        loop {
            self.client
                .events()
                .publish(self.request(PublishRequest {
                    topic: SYNC_TOPIC.to_string(),
                    event: Some(prost_types::Any {
                        type_url: SYNC_TYPE_URL.to_string(),
                        value: nonce.clone().into_bytes(),
                    }),
                }))
                .await
                .map_err(|s| Error::containerd("publish sync event", s))?;
            let resend = tokio::time::sleep(SYNC_RESEND);
            tokio::pin!(resend);
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(Ok(env)) if env.topic == SYNC_TOPIC => {
                            if env.event.is_some_and(|e| e.value == nonce.as_bytes()) {
                                return Ok(rx);
                            }
                        }
                        // Real events before the marker belong to the
                        // rebuild that follows; dropping them loses nothing.
                        Some(Ok(_)) => {}
                        Some(Err(s)) => return Err(Error::containerd("subscribe to events", s)),
                        None => {
                            return Err(Error::containerd(
                                "subscribe to events",
                                tonic::Status::unavailable("event stream ended"),
                            ))
                        }
                    },
                    () = &mut resend => break,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::containerd(
                    "subscribe to events",
                    tonic::Status::deadline_exceeded(format!(
                        "the subscription did not go live in {SYNC_TIMEOUT:?}"
                    )),
                ));
            }
        }
    }
}
