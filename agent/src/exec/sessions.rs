//! Execs their client named, so a request of its own can end one once the
//! client is gone. The exec's own stream cannot always carry that news: a
//! process that stops reading stdin fills the stream's HTTP/2 window, and a
//! client holding a frame it cannot send never sends the reset behind it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::api::invalid;
use crate::error::Result;

/// (sandbox uid, session name).
type Key = (String, String);
type Table = Arc<Mutex<HashMap<Key, watch::Sender<bool>>>>;

/// The named execs of one agent.
#[derive(Debug, Default)]
pub struct ExecSessions {
    table: Table,
}

fn lock(table: &Table) -> MutexGuard<'_, HashMap<Key, watch::Sender<bool>>> {
    table.lock().unwrap_or_else(|e| e.into_inner())
}

impl ExecSessions {
    /// Names an exec of sandbox `uid`; refused when the name is taken.
    pub fn open(&self, uid: &str, session: &str) -> Result<Session> {
        let key = (uid.to_string(), session.to_string());
        let mut table = lock(&self.table);
        if table.contains_key(&key) {
            return Err(invalid(
                "session",
                format!("{session:?} names a running exec of this sandbox already"),
            ));
        }
        let (tx, ended) = watch::channel(false);
        table.insert(key.clone(), tx);
        Ok(Session {
            table: self.table.clone(),
            key,
            ended,
        })
    }

    /// Ends the exec named `session` as if its client had gone; false when
    /// no running exec has that name.
    pub fn end(&self, uid: &str, session: &str) -> bool {
        let key = (uid.to_string(), session.to_string());
        lock(&self.table)
            .get(&key)
            .map(|tx| tx.send_replace(true))
            .is_some()
    }
}

/// One named exec; dropping it forgets the name.
#[derive(Debug)]
pub struct Session {
    table: Table,
    key: Key,
    ended: watch::Receiver<bool>,
}

impl Session {
    /// Resolves once the session is ended.
    pub async fn ended(&mut self) {
        if self.ended.wait_for(|e| *e).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        lock(&self.table).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_is_ended_by_name_and_forgotten_with_its_exec() {
        let sessions = ExecSessions::default();
        let mut s = sessions.open("u", "a").unwrap();
        assert!(sessions.open("u", "a").is_err(), "a name is used once");
        assert!(sessions.open("v", "a").is_ok(), "per sandbox");
        assert!(!sessions.end("u", "b"));
        assert!(sessions.end("u", "a"));
        tokio::time::timeout(std::time::Duration::from_secs(1), s.ended())
            .await
            .unwrap();
        drop(s);
        assert!(!sessions.end("u", "a"), "gone with its exec");
        assert!(sessions.open("u", "a").is_ok());
    }
}
