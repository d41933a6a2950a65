//! Leader election over a coordination.k8s.io Lease, so only one operator replica
//! reconciles at a time. Updates use the Lease's resourceVersion (optimistic
//! concurrency): two replicas can never both believe they took it.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use std::time::Duration;

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_seconds: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Held,
    HeldByOther,
}

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease: Duration,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_seconds: i32::try_from(lease.as_secs()).unwrap_or(i32::MAX).max(1),
        }
    }

    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.lease_seconds).unwrap_or(15))
    }

    /// One attempt to take or renew the lease.
    pub async fn try_acquire(&self) -> Result<LeaseState, kube::Error> {
        let now = jiff::Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, 0, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(LeaseState::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(LeaseState::HeldByOther),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(renewed)), Some(secs)) => {
                let until = renewed
                    .checked_add(jiff::SignedDuration::from_secs(i64::from(secs)))
                    .unwrap_or(*renewed);
                until < now
            }
            _ => true,
        };
        if !mine && !expired {
            return Ok(LeaseState::HeldByOther);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            spec.acquire_time.map(|t| t.0).unwrap_or(now)
        } else {
            now
        };
        lease.spec = Some(self.spec(acquired, transitions, now));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(LeaseState::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(LeaseState::HeldByOther),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, acquired: jiff::Timestamp, transitions: i32, now: jiff::Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_seconds),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        let retry = self.lease_duration() / 3;
        loop {
            match self.try_acquire().await {
                Ok(LeaseState::Held) => return,
                Ok(LeaseState::HeldByOther) => {
                    tracing::debug!(lease = %self.name, "another replica leads; waiting")
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the leader lease"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews the lease until renewal fails for a whole lease duration or another replica
    /// took it; then returns, and the caller must stop reconciling.
    pub async fn hold(&self) {
        let period = self.lease_duration() / 3;
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(period).await;
            match self.try_acquire().await {
                Ok(LeaseState::Held) => last_ok = tokio::time::Instant::now(),
                Ok(LeaseState::HeldByOther) => {
                    tracing::error!("another replica took the leader lease");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the leader lease");
                    if last_ok.elapsed() >= self.lease_duration() {
                        return;
                    }
                }
            }
        }
    }
}
