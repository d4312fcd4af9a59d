//! etcd as a [`SubnetStore`]: a TTL is an etcd lease, granted for each write that needs
//! one and revoked when the write does not take place (a lease that holds nothing would
//! otherwise linger for its whole TTL).

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchStream};
use ipnet::Ipv4Net;
use weft_proto::lease::LeaseAttrs;

use super::{CreateOutcome, KeepAlive, Registry, RegistryError};
use crate::subnet::peers::{decode_entry, decode_key};
use crate::subnet::store::{
    Binding, Claim, LeaseChange, LeaseId, LeaseWatch, Reachability, StoreError, StoredLease,
    SubnetStore,
};

impl From<RegistryError> for StoreError {
    fn from(e: RegistryError) -> Self {
        StoreError::new(e.is_permanent(), e)
    }
}

impl SubnetStore for Registry {
    type Watch = EtcdWatch;

    fn config_location(&self) -> String {
        self.config_key()
    }

    fn leases_location(&self) -> String {
        self.subnets_prefix()
    }

    fn reachability(&self) -> Arc<Reachability> {
        self.reachability.clone()
    }

    async fn read_config(&self) -> Result<Option<String>, StoreError> {
        Ok(self.get_config().await?)
    }

    async fn list_leases(&self) -> Result<(Vec<StoredLease>, i64), StoreError> {
        Ok(self.list_subnets().await?)
    }

    async fn get_lease(&self, subnet: Ipv4Net) -> Result<Option<StoredLease>, StoreError> {
        Ok(self.get_subnet(subnet).await?)
    }

    async fn create_lease(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Claim, StoreError> {
        let lease_id = match ttl {
            Some(ttl) => self.grant(ttl).await?,
            None => 0,
        };
        let outcome = self.create_subnet(subnet, attrs, lease_id).await;
        match outcome {
            Ok(CreateOutcome::Created) => Ok(Claim::Won { lease_id }),
            Ok(CreateOutcome::Exists(holder)) => {
                self.release_unused(lease_id).await;
                Ok(Claim::Lost { holder })
            }
            Err(e) => {
                self.release_unused(lease_id).await;
                Err(e.into())
            }
        }
    }

    async fn replace_lease(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        binding: Binding,
        expected_revision: i64,
    ) -> Result<Option<LeaseId>, StoreError> {
        let (lease_id, fresh) = match binding {
            Binding::Reservation => (0, false),
            Binding::Keep(id) => (id, false),
            Binding::Fresh(ttl) => (self.grant(ttl).await?, true),
        };
        let outcome = self
            .replace_subnet(subnet, attrs, lease_id, expected_revision)
            .await;
        match outcome {
            Ok(true) => Ok(Some(lease_id)),
            other => {
                if fresh {
                    self.release_unused(lease_id).await;
                }
                other.map(|_| None).map_err(StoreError::from)
            }
        }
    }

    async fn delete_lease(
        &self,
        subnet: Ipv4Net,
        expected_revision: i64,
    ) -> Result<bool, StoreError> {
        Ok(self.delete_subnet(subnet, expected_revision).await?)
    }

    async fn time_left(&self, lease_id: LeaseId) -> Result<Option<i64>, StoreError> {
        Ok(self.time_to_live(lease_id).await?)
    }

    async fn renew(&self, lease_id: LeaseId) -> Result<Option<i64>, StoreError> {
        let mut open = self.keep_alive.lock().await;
        if open.as_ref().map(|k| k.lease_id) != Some(lease_id) {
            *open = None;
            match self.keep_alive(lease_id).await? {
                Some((keeper, responses)) => {
                    *open = Some(KeepAlive {
                        lease_id,
                        keeper,
                        responses,
                    })
                }
                None => return Ok(None),
            }
        }
        let Some(stream) = open.as_mut() else {
            return Ok(None);
        };
        match self
            .keep_alive_once(&mut stream.keeper, &mut stream.responses)
            .await
        {
            Ok(ttl) if ttl > 0 => Ok(Some(ttl)),
            Ok(_) => {
                *open = None;
                Ok(None)
            }
            Err(e) => {
                // A broken stream is opened anew at the next renewal.
                *open = None;
                Err(e.into())
            }
        }
    }

    async fn release(&self, lease_id: LeaseId) -> Result<(), StoreError> {
        {
            let mut open = self.keep_alive.lock().await;
            if open.as_ref().map(|k| k.lease_id) == Some(lease_id) {
                *open = None;
            }
        }
        Ok(self.revoke(lease_id).await?)
    }

    async fn watch_leases(&self, start_revision: i64) -> Result<EtcdWatch, StoreError> {
        let stream = self.watch_subnets(start_revision).await?;
        Ok(EtcdWatch {
            stream,
            reachability: self.reachability.clone(),
        })
    }
}

impl Registry {
    /// Revokes a lease granted for a write that did not take place; a failure only
    /// leaves it to expire.
    async fn release_unused(&self, lease_id: i64) {
        if lease_id != 0 {
            if let Err(e) = self.revoke(lease_id).await {
                tracing::debug!(lease_id, error = %e, "could not revoke an unused etcd lease");
            }
        }
    }
}

/// An etcd watch on the subnet keys.
pub struct EtcdWatch {
    stream: WatchStream,
    reachability: Arc<Reachability>,
}

impl std::fmt::Debug for EtcdWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdWatch").finish_non_exhaustive()
    }
}

impl LeaseWatch for EtcdWatch {
    async fn next(&mut self) -> Result<Vec<LeaseChange>, StoreError> {
        let response = match self.stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => {
                self.reachability.failed("watch stream closed".into());
                return Err(StoreError::new(false, "watch stream closed by etcd"));
            }
            Err(e) => {
                let cause = super::brief(&e);
                self.reachability.failed(cause.clone());
                return Err(StoreError::new(false, cause));
            }
        };
        self.reachability.ok();
        if response.canceled() || response.compact_revision() > 0 {
            return Err(StoreError::new(
                false,
                format!(
                    "watch canceled (compacted at revision {}): {}",
                    response.compact_revision(),
                    response.cancel_reason()
                ),
            ));
        }
        let mut changes = Vec::with_capacity(response.events().len());
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(subnet) = decode_key(&String::from_utf8_lossy(kv.key())) else {
                continue;
            };
            changes.push(match event.event_type() {
                EventType::Put => LeaseChange::Put {
                    subnet,
                    attrs: decode_entry(kv.key(), kv.value()).map(|entry| entry.attrs),
                },
                EventType::Delete => LeaseChange::Deleted(subnet),
            });
        }
        Ok(changes)
    }
}
