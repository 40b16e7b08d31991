//! Tenant rows. `TenantRow` stays here; callers get the domain [`Tenant`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::error::Error;
use crate::registry::Registry;
use crate::sqlstate;
use crate::tenant::{NewTenant, Placement, Tenant, TenantRef, TenantState, Tier};

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: Uuid,
    slug: String,
    display_name: String,
    plan: String,
    labels: sqlx::types::Json<BTreeMap<String, String>>,
    tier: String,
    state: String,
    cluster: String,
    database_name: Option<String>,
    schema_name: Option<String>,
    role_name: Option<String>,
    schema_version: i32,
    routing_epoch: i64,
    key_id: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The columns of [`TenantRow`], as a literal so queries stay `&'static str`.
macro_rules! columns {
    () => {
        "id, slug, display_name, plan, labels, tier, state, cluster, database_name, \
         schema_name, role_name, schema_version, routing_epoch, key_id, created_at, updated_at"
    };
}

impl TryFrom<TenantRow> for Tenant {
    type Error = Error;
    fn try_from(r: TenantRow) -> Result<Self, Error> {
        Ok(Tenant {
            id: r.id,
            slug: r.slug,
            display_name: r.display_name,
            plan: r.plan,
            labels: r.labels.0,
            tier: r.tier.parse().map_err(|_| corrupt("tier", &r.tier))?,
            state: r.state.parse().map_err(|_| corrupt("state", &r.state))?,
            placement: Placement {
                cluster: r.cluster,
                database: r.database_name,
                schema: r.schema_name,
                role: r.role_name,
            },
            schema_version: r.schema_version,
            routing_epoch: r.routing_epoch,
            key_id: r.key_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

fn corrupt(what: &str, value: &str) -> Error {
    Error::Internal(format!("registry holds an unknown tenant {what} {value:?}"))
}

/// Keyset position for listing: (created_at, id) of the last tenant returned.
pub type TenantCursor = (DateTime<Utc>, Uuid);

#[derive(Debug, Default, Clone)]
pub struct TenantFilter {
    pub tier: Option<Tier>,
    pub state: Option<TenantState>,
}

/// Registry-only changes (UpdateTenant). `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct TenantChanges {
    pub display_name: Option<String>,
    pub plan: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
}

impl Registry {
    /// Inserts the tenant in state `provisioning`. A live tenant with the same slug makes this
    /// fail with ALREADY_EXISTS (the partial unique index decides, so concurrent creates race
    /// safely).
    pub async fn insert_tenant(
        conn: &mut PgConnection,
        id: Uuid,
        new: &NewTenant,
        cluster: &str,
    ) -> Result<(), Error> {
        let r = sqlx::query(
            "INSERT INTO tenants (id, slug, display_name, plan, labels, tier, state, cluster)
             VALUES ($1, $2, $3, $4, $5, $6, 'provisioning', $7)",
        )
        .bind(id)
        .bind(new.slug.as_str())
        .bind(&new.display_name)
        .bind(&new.plan)
        .bind(sqlx::types::Json(&new.labels))
        .bind(new.tier.as_str())
        .bind(cluster)
        .execute(conn)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if sqlstate::is_unique(&e, "tenants_live_slug") => Err(Error::AlreadyExists {
                kind: "tenant",
                name: new.slug.as_str().to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn find_tenant(&self, r: &TenantRef) -> Result<Option<Tenant>, Error> {
        let row: Option<TenantRow> = match r {
            TenantRef::Id(id) => {
                sqlx::query_as(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM tenants WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(self.pool())
                .await?
            }
            // The live tenant with that slug; failed and deleted ones are only reachable by
            // id (a deleted tenant's certificate also by its slug).
            TenantRef::Slug(slug) => {
                sqlx::query_as(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM tenants WHERE slug = $1 AND state NOT IN ('failed', 'deleted')"
                ))
                .bind(slug.as_str())
                .fetch_optional(self.pool())
                .await?
            }
        };
        row.map(Tenant::try_from).transpose()
    }

    /// A tenant by id, or by slug: the live tenant with it, else the latest deleted one that
    /// had it (its tombstone, as ListTenants shows it). NOT_FOUND if neither.
    pub async fn get_tenant_or_tombstone(&self, r: &TenantRef) -> Result<Tenant, Error> {
        if let Some(t) = self.find_tenant(r).await? {
            return Ok(t);
        }
        if let TenantRef::Slug(slug) = r {
            let row: Option<TenantRow> = sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM tenants WHERE slug = $1 AND state = 'deleted'
                 ORDER BY updated_at DESC LIMIT 1"
            ))
            .bind(slug.as_str())
            .fetch_optional(self.pool())
            .await?;
            if let Some(row) = row {
                return Tenant::try_from(row);
            }
        }
        Err(Error::not_found("tenant", r.to_string()))
    }

    pub async fn get_tenant(&self, r: &TenantRef) -> Result<Tenant, Error> {
        self.find_tenant(r)
            .await?
            .ok_or_else(|| Error::not_found("tenant", r.to_string()))
    }

    pub async fn list_tenants(
        &self,
        filter: &TenantFilter,
        after: Option<TenantCursor>,
        limit: i64,
    ) -> Result<Vec<Tenant>, Error> {
        let rows: Vec<TenantRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM tenants
             WHERE ($1::text IS NULL OR tier = $1)
               AND ($2::text IS NULL OR state = $2)
               AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4))
             ORDER BY created_at, id
             LIMIT $5"
        ))
        .bind(filter.tier.map(Tier::as_str))
        .bind(filter.state.map(TenantState::as_str))
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(Tenant::try_from).collect()
    }

    pub async fn update_tenant(&self, id: Uuid, c: &TenantChanges) -> Result<Tenant, Error> {
        let row: Option<TenantRow> = sqlx::query_as(concat!(
            "UPDATE tenants SET
                display_name = coalesce($2, display_name),
                plan = coalesce($3, plan),
                labels = coalesce($4, labels),
                updated_at = now()
             WHERE id = $1
             RETURNING ",
            columns!(),
            ""
        ))
        .bind(id)
        .bind(c.display_name.as_deref())
        .bind(c.plan.as_deref())
        .bind(c.labels.as_ref().map(sqlx::types::Json))
        .fetch_optional(self.pool())
        .await?;
        row.map(Tenant::try_from)
            .transpose()?
            .ok_or_else(|| Error::not_found("tenant", id.to_string()))
    }

    /// Records where the tenant's data lives (the provisioning `reserve` step).
    pub async fn set_placement<'e>(
        exec: impl PgExecutor<'e>,
        id: Uuid,
        p: &Placement,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE tenants SET cluster = $2, database_name = $3, schema_name = $4, role_name = $5,
                    updated_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(&p.cluster)
        .bind(&p.database)
        .bind(&p.schema)
        .bind(&p.role)
        .execute(exec)
        .await?;
        Ok(())
    }

    /// Points the tenant at a new container in `tier` and opens a new routing epoch, in one
    /// statement: ResolveTenant sees the old placement with the old epoch or the new one with
    /// the new epoch, never a mix. Idempotent: a tenant already there keeps its epoch.
    pub async fn switch_placement<'e>(
        exec: impl PgExecutor<'e>,
        id: Uuid,
        tier: Tier,
        p: &Placement,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE tenants SET tier = $2, cluster = $3, database_name = $4, schema_name = $5,
                    role_name = $6, routing_epoch = routing_epoch + 1, updated_at = now()
             WHERE id = $1
               AND (tier, cluster, database_name, schema_name, role_name)
                   IS DISTINCT FROM ($2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(tier.as_str())
        .bind(&p.cluster)
        .bind(&p.database)
        .bind(&p.schema)
        .bind(&p.role)
        .execute(exec)
        .await?;
        Ok(())
    }

    /// Records that the tenant's container is at `schema_version` (versions only move
    /// forward).
    pub async fn raise_schema_version<'e>(
        exec: impl PgExecutor<'e>,
        id: Uuid,
        schema_version: i32,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE tenants SET schema_version = greatest(schema_version, $2), updated_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(schema_version)
        .execute(exec)
        .await?;
        Ok(())
    }

    /// Marks the tenant active at `schema_version` and opens its first routing epoch.
    /// Idempotent: re-running it leaves the epoch as it is.
    pub async fn activate_tenant<'e>(
        exec: impl PgExecutor<'e>,
        id: Uuid,
        schema_version: i32,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE tenants SET state = 'active', schema_version = greatest(schema_version, $2),
                    routing_epoch = greatest(routing_epoch, 1), updated_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(schema_version)
        .execute(exec)
        .await?;
        Ok(())
    }

    /// Records the tenant's key in the key service.
    pub async fn set_tenant_key<'e>(
        exec: impl PgExecutor<'e>,
        id: Uuid,
        key_id: &str,
    ) -> Result<(), Error> {
        sqlx::query("UPDATE tenants SET key_id = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(key_id)
            .execute(exec)
            .await?;
        Ok(())
    }

    /// Active tenants without a key and without a running operation: what the key backfill
    /// still has to do.
    pub async fn tenants_without_key(&self) -> Result<Vec<Uuid>, Error> {
        Ok(sqlx::query_scalar(
            "SELECT t.id FROM tenants t
             WHERE t.key_id IS NULL AND t.state = 'active'
               AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.tenant_id = t.id
                               AND o.state IN ('pending', 'running', 'compensating'))
             ORDER BY t.created_at",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Marks a tenant whose provisioning was rolled back; frees its slug.
    pub async fn fail_tenant<'e>(exec: impl PgExecutor<'e>, id: Uuid) -> Result<(), Error> {
        sqlx::query(
            "UPDATE tenants SET state = 'failed', routing_epoch = 0, updated_at = now()
             WHERE id = $1 AND state = 'provisioning'",
        )
        .bind(id)
        .execute(exec)
        .await?;
        Ok(())
    }

    /// Marks an active tenant `deleting` (no longer routed), or leaves one already deleting
    /// as it is. Returns false for a tenant in any other state.
    pub async fn begin_deletion<'e>(exec: impl PgExecutor<'e>, id: Uuid) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE tenants SET state = 'deleting', updated_at = now()
             WHERE id = $1 AND state IN ('active', 'deleting')",
        )
        .bind(id)
        .execute(exec)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Gives a tenant whose deletion was refused before any data went back its routes.
    pub async fn abandon_deletion<'e>(exec: impl PgExecutor<'e>, id: Uuid) -> Result<(), Error> {
        sqlx::query(
            "UPDATE tenants SET state = 'active', updated_at = now()
             WHERE id = $1 AND state = 'deleting'",
        )
        .bind(id)
        .execute(exec)
        .await?;
        Ok(())
    }

    /// Leaves the tombstone of a deleted tenant: id, slug, tier, cluster and key id stay (the
    /// certificate names them); display name, plan, labels and placement go. Idempotent.
    pub async fn tombstone_tenant<'e>(exec: impl PgExecutor<'e>, id: Uuid) -> Result<(), Error> {
        sqlx::query(
            "UPDATE tenants SET state = 'deleted', display_name = '', plan = '',
                    labels = '{}'::jsonb, database_name = NULL, schema_name = NULL,
                    role_name = NULL, routing_epoch = 0,
                    deleted_at = coalesce(deleted_at, now()), updated_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .execute(exec)
        .await?;
        Ok(())
    }
}
