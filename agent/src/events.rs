//! The agent's event stream: every sandbox state change gets a sequence
//! number, is kept in a short backlog (so a client that reconnects with
//! `?since=<seq>` misses nothing) and is fanned out to every subscriber.

use std::collections::VecDeque;
use std::sync::Mutex;

use chrono::Utc;
use fast_sandbox_api::agent::{EventKind, SandboxEvent, SandboxInfo};
use tokio::sync::broadcast;

/// Events kept for clients that resume with `since`.
pub const BACKLOG: usize = 4096;

/// Sequence numbers, backlog and fan-out.
pub struct EventBus {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<SandboxEvent>,
}

struct Inner {
    seq: u64,
    backlog: VecDeque<SandboxEvent>,
}

/// A subscription: the backlog the client asked for, then live events.
pub struct Subscription {
    /// Events after `since`, oldest first.
    pub backlog: Vec<SandboxEvent>,
    /// Live events after the backlog.
    pub live: broadcast::Receiver<SandboxEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// An empty bus.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(BACKLOG);
        Self {
            inner: Mutex::new(Inner {
                seq: 0,
                backlog: VecDeque::with_capacity(BACKLOG),
            }),
            tx,
        }
    }

    /// Publishes a change and returns its sequence number.
    pub fn emit(&self, kind: EventKind, info: SandboxInfo) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.seq += 1;
        let ev = SandboxEvent {
            seq: inner.seq,
            kind,
            at: Utc::now(),
            sandbox: Some(info),
        };
        if inner.backlog.len() == BACKLOG {
            inner.backlog.pop_front();
        }
        inner.backlog.push_back(ev.clone());
        // Sent under the lock so subscribers see events in sequence order.
        let _ = self.tx.send(ev);
        inner.seq
    }

    /// Sequence number of the last event.
    pub fn last_seq(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).seq
    }

    /// A heartbeat line carrying the last sequence number.
    pub fn heartbeat(&self) -> SandboxEvent {
        SandboxEvent {
            seq: self.last_seq(),
            kind: EventKind::Heartbeat,
            at: Utc::now(),
            sandbox: None,
        }
    }

    /// Subscribes; with `since`, the retained events after it come first.
    pub fn subscribe(&self, since: Option<u64>) -> Subscription {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let backlog = match since {
            Some(s) => inner
                .backlog
                .iter()
                .filter(|e| e.seq > s)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        Subscription {
            backlog,
            live: self.tx.subscribe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn since_replays_then_streams_live() {
        let bus = EventBus::new();
        bus.emit(EventKind::Started, SandboxInfo::default());
        bus.emit(EventKind::Exited, SandboxInfo::default());
        let mut sub = bus.subscribe(Some(1));
        assert_eq!(sub.backlog.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
        bus.emit(EventKind::Deleted, SandboxInfo::default());
        let live = sub.live.recv().await.unwrap();
        assert_eq!((live.seq, live.kind), (3, EventKind::Deleted));
        assert_eq!(bus.heartbeat().seq, 3);
        assert!(bus.subscribe(None).backlog.is_empty());
    }
}
