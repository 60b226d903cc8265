//! Liveness and readiness shared by a server's parts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Readiness flag. `/healthz` answers 200 while the process serves;
/// `/readyz` answers 200 only once the owner called `set_ready(true)`
/// (caches synced, state rebuilt), so Kubernetes routes no traffic before.
#[derive(Clone, Debug, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    /// Not ready yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the server ready or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
