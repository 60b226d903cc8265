//! Leases: what the agent creates under one is kept from containerd's
//! garbage collector until the lease goes (or expires), and a lease's name
//! claims it for one agent of the node.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use containerd_client::services::v1::{
    CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
    ListRequest as ListLeasesRequest,
};

use super::{Containerd, timestamp};
use crate::error::{Error, Result};
/// Lease label that makes containerd's garbage collector drop the lease
/// (and whatever only it references) after a time.
const LEASE_EXPIRE_LABEL: &str = "containerd.io/gc.expire";

/// One lease as containerd lists it.
#[derive(Clone, Debug)]
pub struct LeaseRecord {
    /// The lease's name.
    pub id: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// When it was made.
    pub created_at: Option<DateTime<Utc>>,
}

impl Containerd {
    /// Creates a lease that expires after `ttl` unless deleted first; what is
    /// created under it and never referenced otherwise is then collected. A
    /// lease of that name that exists already serves as is.
    pub async fn create_lease(
        &self,
        id: &str,
        ttl: Option<Duration>,
        labels: HashMap<String, String>,
    ) -> Result<String> {
        let mut labels = labels;
        if let Some(ttl) = ttl {
            let expire = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
            labels.insert(
                LEASE_EXPIRE_LABEL.to_string(),
                expire.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
        }
        self.claim_lease(id, labels).await?;
        Ok(id.to_string())
    }
    /// Creates the lease `id` with `labels` unless it exists: true when
    /// this call made it. A lease name is unique in a containerd namespace,
    /// so it claims a name for every agent on the node at once.
    pub async fn claim_lease(&self, id: &str, labels: HashMap<String, String>) -> Result<bool> {
        let resp = self
            .client
            .leases()
            .create(self.request(CreateLeaseRequest {
                id: id.to_string(),
                labels,
            }))
            .await;
        match resp {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(false),
            Err(s) => Err(Error::containerd("create lease", s)),
        }
    }
    /// The leases whose ids start with `prefix`: id, labels, creation time.
    pub async fn leases(&self, prefix: &str) -> Result<Vec<LeaseRecord>> {
        let resp = self
            .client
            .leases()
            .list(self.request(ListLeasesRequest { filters: vec![] }))
            .await
            .map_err(|s| Error::containerd("list leases", s))?;
        Ok(resp
            .into_inner()
            .leases
            .into_iter()
            .filter(|l| l.id.starts_with(prefix))
            .map(|l| LeaseRecord {
                created_at: timestamp(l.created_at.as_ref()),
                id: l.id,
                labels: l.labels,
            })
            .collect())
    }
    /// Deletes a lease (already gone is fine).
    pub async fn delete_lease(&self, id: &str) -> Result<()> {
        let resp = self
            .client
            .leases()
            .delete(self.request(DeleteLeaseRequest {
                id: id.to_string(),
                sync: false,
            }))
            .await;
        match resp {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(Error::containerd("delete lease", s)),
        }
    }
}
