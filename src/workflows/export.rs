//! Export: prepare → dump → sign → record.
//!
//! - `prepare` makes sure the tenant has its key and records the export as `running`.
//! - `dump` streams the tenant's snapshot (dataplane::dump) through the archive writer
//!   (zstd, then AES-256-GCM STREAM under a fresh data key from the tenant key) into a
//!   multipart upload; three stages run concurrently with bounded queues between them, so
//!   memory stays flat. A retry first aborts whatever upload an earlier attempt left, then
//!   starts over with a new data key: the object is complete only when the upload completes.
//! - `sign` writes the manifest and its signature beside the archive.
//! - `record` marks the export complete; only now does it count as an export.
//! - `prune`, for a scheduled backup only, applies the tenant's backup policy to its
//!   scheduled exports ([`crate::backup::retention::prune`]); an export taken on request
//!   prunes nothing.
//!
//! Compensation aborts uploads, deletes the export's objects and marks it `failed`.
//!

//! The writing itself (dump, seal, upload, manifest, record) is [`export_writer`], which a
//! deletion's final export uses too.

use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::archive::layout::ExportKeys;
use crate::backup::{Slot, retention};
use crate::registry::Registry;
use crate::registry::exports::NewExport;
use crate::tenant::TenantRef;
use crate::workflow::{StepContext, StepError, Workflow, steps};
use crate::workflows::export_writer::{self, Dumped, Signed, Source, Wrap};
use crate::workflows::tenant_key;

pub struct Export;

steps!(pub enum Step {
    Prepare => "prepare",
    Dump => "dump",
    Sign => "sign",
    Record => "record",
    Prune => "prune",
});

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub export_id: Uuid,
    /// Set by `prepare`.
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub tenant_slug: Option<String>,
    /// Set by `dump`.
    #[serde(default)]
    pub dumped: Option<Dumped>,
    /// A scheduled backup (absent in states stored before schedules existed).
    #[serde(default)]
    pub scheduled: Option<Slot>,
}

impl State {
    pub fn new(export_id: Uuid) -> Self {
        State {
            export_id,
            key_id: None,
            tenant_slug: None,
            dumped: None,
            scheduled: None,
        }
    }

    pub fn scheduled(export_id: Uuid, scheduled: Slot) -> Self {
        State {
            scheduled: Some(scheduled),
            ..State::new(export_id)
        }
    }
}

impl Workflow for Export {
    const KIND: &'static str = "export";
    type Step = Step;
    type State = State;

    async fn run_step(
        &self,
        cx: &StepContext<'_>,
        step: Step,
        state: &mut State,
    ) -> Result<(), StepError> {
        let deps = cx.deps;
        let tenant_id = cx.tenant_id()?;
        let keys = ExportKeys::new(tenant_id, state.export_id);
        let missing = StepError::missing;
        match step {
            Step::Prepare => {
                let tenant = deps.registry.get_tenant(&TenantRef::Id(tenant_id)).await?;
                tenant.ensure_active()?;
                let key_id = match tenant.key_id {
                    Some(k) => k,
                    None => tenant_key::ensure(deps, tenant_id).await?,
                };
                Registry::insert_export(
                    deps.registry.pool(),
                    &NewExport {
                        id: state.export_id,
                        tenant_id,
                        operation_id: cx.operation_id,
                        tier: tenant.tier.as_str(),
                        object_key: keys.archive.as_str(),
                        manifest_key: keys.manifest.as_str(),
                        handover: false,
                        scheduled: state.scheduled.map(|s| (s.policy_id, s.slot)),
                    },
                )
                .await?;
                state.key_id = Some(key_id);
                state.tenant_slug = Some(tenant.slug.as_str().to_owned());
            }
            Step::Dump => {
                let key_id = state.key_id.clone().ok_or_else(|| missing("key"))?;
                let slug = state.tenant_slug.clone().unwrap_or_default();
                let wrap = Wrap::Tenant(&key_id);
                let source = Source::registered(deps, tenant_id).await?;
                let dumped =
                    export_writer::dump(cx, &source, state.export_id, wrap, &slug, &keys).await?;
                state.dumped = Some(dumped);
            }
            Step::Sign => {
                let dumped = state.dumped.as_ref().ok_or_else(|| missing("dump"))?;
                let key_id = state.key_id.as_ref().ok_or_else(|| missing("key"))?;
                let slug = state.tenant_slug.clone().unwrap_or_default();
                let signed = Signed {
                    tenant_id,
                    export_id: state.export_id,
                    slug: &slug,
                    key_id,
                };
                export_writer::write_manifest(deps, &keys, &signed, dumped).await?;
            }
            Step::Record => {
                let dumped = state.dumped.as_ref().ok_or_else(|| missing("dump"))?;
                let key_id = state.key_id.as_deref().ok_or_else(|| missing("key"))?;
                export_writer::record(deps, state.export_id, dumped, key_id).await?;
                let kind = <Export as Workflow>::KIND;
                crate::metrics::bytes_moved(kind, dumped.ciphertext.bytes);
                crate::metrics::rows_moved(kind, dumped.tables.iter().map(|t| t.rows).sum());
                tracing::info!(tenant_id = %tenant_id, export_id = %state.export_id,
                    bytes = dumped.ciphertext.bytes, "export complete");
            }
            Step::Prune => {
                if state.scheduled.is_some() {
                    let removed = retention::prune(deps, tenant_id, Utc::now()).await?;
                    tracing::info!(tenant_id = %tenant_id, removed = removed.len(),
                        "retention applied");
                }
            }
        }
        Ok(())
    }

    async fn compensate(&self, cx: &StepContext<'_>, state: &mut State) -> Result<(), StepError> {
        let keys = ExportKeys::new(cx.tenant_id()?, state.export_id);
        export_writer::discard(cx.deps, &keys, state.export_id).await
    }
}
