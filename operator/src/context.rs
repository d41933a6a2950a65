//! State shared by the reconcilers, and the server-side-apply helper.

use crate::admin::Admin;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

/// Field manager of every server-side apply the operator makes.
pub const MANAGER: &str = "ringfs-operator";

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub admin: Arc<dyn Admin>,
    /// Requeue delay while something is in progress (scaling, data moving).
    pub busy_requeue: Duration,
    /// Requeue delay of a settled object (status refresh).
    pub idle_requeue: Duration,
}

impl Context {
    /// Applies `obj` (server-side apply, forced: the operator owns these fields).
    pub async fn apply<K>(&self, ns: &str, obj: &K) -> Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        let name = obj
            .meta()
            .name
            .clone()
            .ok_or(Error::MissingField("metadata.name"))?;
        Ok(api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(obj),
            )
            .await?)
    }

    /// Publishes an Event about `obj`; failures are logged, never fatal (events are
    /// best-effort and must not block reconciliation).
    pub async fn event<K>(&self, obj: &K, warning: bool, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "cannot publish event");
        }
    }
}
