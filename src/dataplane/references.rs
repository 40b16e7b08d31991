//! The foreign keys among a container's tenant tables, checked for one tenant's rows only.
//!
//! A restore of a new tenant into the pool loads its rows straight into the shared tables
//! with the per-row foreign-key triggers off (`session_replication_role = replica`: two
//! connections load at once, so a child row may arrive before the parent row it names is
//! committed on the other one; docs/restore.md). Its `index` step then checks every foreign
//! key here: the tenant's rows that name a parent row which does not exist. Each check reads
//! only the tenant's rows (the conventions put `tenant_id` in every foreign key, so the
//! parent lookups are by index) and takes no lock beyond a read: the other tenants sharing
//! the tables are neither read nor held up.

use super::{Cluster, Container, DataPlaneError, tables};
use crate::sql::{Ident, Statement};

/// One foreign key: `table (columns)` references `parent_schema.parent (parent_columns)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    pub table: Ident,
    pub columns: Vec<Ident>,
    pub parent_schema: Ident,
    pub parent: Ident,
    pub parent_columns: Vec<Ident>,
    /// MATCH SIMPLE (the default): a row with a NULL in any of `columns` references nothing.
    /// [`dangling`] checks only these; MATCH FULL keys are left to PostgreSQL's own checks.
    pub simple: bool,
}

/// The foreign keys of the tenant tables of `c` (a partitioned table's once, on it).
pub async fn of(cluster: &Cluster, c: &Container) -> Result<Vec<Reference>, DataPlaneError> {
    let db = cluster.database(&c.database);
    let tenant_tables: Vec<String> = tables::tenant_tables(cluster, &db, &c.schema)
        .await?
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();
    type Row = (
        String,
        String,
        String,
        String,
        bool,
        Vec<String>,
        Vec<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT k.conname::text, t.relname::text, pn.nspname::text, p.relname::text,
                k.confmatchtype = 's',
                ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY AS u(n, i)
                      JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n
                      ORDER BY u.i),
                ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY AS u(n, i)
                      JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n
                      ORDER BY u.i)
         FROM pg_constraint k
         JOIN pg_class t ON t.oid = k.conrelid
         JOIN pg_namespace n ON n.oid = t.relnamespace
         JOIN pg_class p ON p.oid = k.confrelid
         JOIN pg_namespace pn ON pn.oid = p.relnamespace
         WHERE n.nspname = $1 AND t.relname = ANY($2) AND k.contype = 'f' AND k.conparentid = 0
         ORDER BY 1, 2",
    )
    .bind(c.schema.as_str())
    .bind(&tenant_tables)
    .fetch_all(&db)
    .await
    .map_err(|e| cluster.err(e))?;
    let idents = |names: Vec<String>| {
        names
            .into_iter()
            .map(Ident::new)
            .collect::<Result<Vec<_>, _>>()
    };
    rows.into_iter()
        .map(
            |(name, table, parent_schema, parent, simple, columns, parent_columns)| {
                Ok::<_, DataPlaneError>(Reference {
                    name,
                    table: Ident::new(table)?,
                    columns: idents(columns)?,
                    parent_schema: Ident::new(parent_schema)?,
                    parent: Ident::new(parent)?,
                    parent_columns: idents(parent_columns)?,
                    simple,
                })
            },
        )
        .collect()
}

/// The foreign keys of `refs` (MATCH SIMPLE ones) that some row of `c.tenant_id` breaks: it
/// names a parent row that does not exist. Two are checked at a time (each is one scan of
/// the tenant's child rows, on one core).
pub async fn dangling(
    cluster: &Cluster,
    c: &Container,
    refs: &[Reference],
) -> Result<Vec<String>, DataPlaneError> {
    let simple: Vec<&Reference> = refs.iter().filter(|r| r.simple).collect();
    let [a, b] = super::two_lanes(simple, |_| 1);
    let (mut broken, other) =
        tokio::try_join!(dangling_of(cluster, c, a), dangling_of(cluster, c, b))?;
    broken.extend(other);
    broken.sort();
    Ok(broken)
}

async fn dangling_of(
    cluster: &Cluster,
    c: &Container,
    refs: Vec<&Reference>,
) -> Result<Vec<String>, DataPlaneError> {
    let db = cluster.database(&c.database);
    let mut broken = Vec::new();
    for r in refs {
        let mut stmt = Statement::new("SELECT EXISTS (SELECT 1 FROM ")
            .qualified(&c.schema, &r.table)
            .push(" AS c WHERE c.tenant_id = $1");
        for col in &r.columns {
            stmt = stmt.push(" AND c.").ident(col).push(" IS NOT NULL");
        }
        stmt = stmt
            .push(" AND NOT EXISTS (SELECT 1 FROM ")
            .qualified(&r.parent_schema, &r.parent)
            .push(" AS p WHERE ");
        for (i, (col, parent_col)) in r.columns.iter().zip(&r.parent_columns).enumerate() {
            stmt = if i > 0 { stmt.push(" AND ") } else { stmt }
                .push("p.")
                .ident(parent_col)
                .push(" = c.")
                .ident(col);
        }
        let (found,): (bool,) = sqlx::query_as(stmt.push("))").into_sql())
            .bind(c.tenant_id)
            .fetch_one(&db)
            .await
            .map_err(|e| cluster.err(e))?;
        if found {
            broken.push(format!(
                "{} ({} references {})",
                r.name,
                r.table.as_str(),
                r.parent.as_str()
            ));
        }
    }
    Ok(broken)
}
