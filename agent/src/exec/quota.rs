//! How many processes may be exec'd into one sandbox at once, attached or
//! detached. Each holds FIFOs, pumps, a containerd wait and a share of the
//! agent's connection to containerd for its whole life, so without a bound
//! one sandbox's loop of detached execs would take the agent's descriptors
//! and memory from every other sandbox on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Execs one sandbox may run at once.
pub const MAX_EXECS_PER_SANDBOX: usize = 128;

/// Live execs per sandbox UID.
#[derive(Debug, Default)]
pub(crate) struct ExecQuota {
    live: Arc<Mutex<HashMap<String, usize>>>,
}

/// One exec's place in its sandbox's quota, given back when dropped.
#[derive(Debug)]
pub(crate) struct ExecSlot {
    live: Arc<Mutex<HashMap<String, usize>>>,
    uid: String,
}

impl ExecQuota {
    /// A place for one more exec in sandbox `uid`, or `CapacityExceeded`
    /// naming the limit.
    pub(crate) fn admit(&self, uid: &str) -> Result<ExecSlot> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let n = live.entry(uid.to_string()).or_default();
        if *n >= MAX_EXECS_PER_SANDBOX {
            return Err(Error::TooManyExecs {
                limit: MAX_EXECS_PER_SANDBOX,
            });
        }
        *n += 1;
        Ok(ExecSlot {
            live: self.live.clone(),
            uid: uid.to_string(),
        })
    }
}

impl Drop for ExecSlot {
    fn drop(&mut self) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = live.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                live.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fast_sandbox_api::agent::ErrorCode;

    #[test]
    fn each_sandbox_has_its_own_bound_given_back_as_execs_end() {
        let q = ExecQuota::default();
        let mut held: Vec<ExecSlot> = (0..MAX_EXECS_PER_SANDBOX)
            .map(|_| q.admit("a").unwrap())
            .collect();
        let e = q.admit("a").unwrap_err();
        assert_eq!(e.code(), ErrorCode::CapacityExceeded);
        assert!(e.to_string().contains("128"), "{e}");
        // Another sandbox is not affected.
        let b = q.admit("b").unwrap();
        // An exec that ends gives its place back.
        held.pop();
        held.push(q.admit("a").unwrap());
        assert!(q.admit("a").is_err());
        drop((held, b));
        assert!(q.live.lock().unwrap().is_empty());
    }
}
