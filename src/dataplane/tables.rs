//! A container's tenant tables, read from the container's own catalog, never from a list in
//! our code: the tenant schema belongs to the user. Copies, digests, dumps, loads, restores,
//! grants and the pool's row deletion all ask here.
//!
//! A tenant table is an ordinary or partitioned table of the container's schema with a
//! `tenant_id` column. A partition is reached through its parent (reading or writing the
//! parent covers every partition), so partitions are not listed. tenantd's own tables in the
//! container (the migration bookkeeping and the write fences, [`NOT_TENANT_DATA`]) are not
//! tenant data.
//!
//! Order: parents before children by foreign key, so a copy into a container whose foreign
//! keys are enforced inserts referenced rows first and a deletion goes in reverse. A
//! self-reference imposes no order (PostgreSQL checks a statement's foreign keys at its end,
//! so one COPY of the whole table satisfies it). Tables on a cycle of foreign keys cannot all
//! come first: they follow the rest, in name order, and a copy into a container that enforces
//! such keys needs them DEFERRABLE. Ties break by name, so the order is the same on every
//! replica and in every container at one version.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{PgConnection, PgExecutor};

use super::{Cluster, DataPlaneError};
use crate::sql::{Ident, Statement};

/// Tables in a container that belong to tenantd, not to the tenant schema.
pub const NOT_TENANT_DATA: &[&str] = &[
    super::catalog::BOOKKEEPING,
    super::fence::TABLE,
    super::fence::LEGACY_TABLE,
];

/// The tenant tables of `schema`, parents first (see the module doc). Empty when the schema
/// does not exist.
pub async fn tenant_tables<'e>(
    cluster: &Cluster,
    exec: impl PgExecutor<'e>,
    schema: &Ident,
) -> Result<Vec<Ident>, DataPlaneError> {
    names_in(exec, schema.as_str())
        .await
        .map_err(|e| cluster.err(e))?
        .into_iter()
        .map(|t| Ident::new(t).map_err(DataPlaneError::from))
        .collect()
}

/// [`tenant_tables`] as plain names, for callers outside the data plane (benchmarks, tests).
pub async fn names_in<'e>(
    exec: impl PgExecutor<'e>,
    schema: &str,
) -> Result<Vec<String>, sqlx::Error> {
    // One row per (table, referenced table), or (table, NULL) for a table that references
    // none of the schema's tables. Constraints a partition inherits (conparentid <> 0) are
    // its parent's.
    //
    // The schema's relations are found through pg_depend (indexed by what is depended on),
    // not by filtering pg_class on relnamespace, which has no index: in a shared database
    // with thousands of tenant schemas that would read every relation of every tenant.
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "WITH c AS MATERIALIZED (
             SELECT c.oid, c.relname, c.relnamespace
             FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
             WHERE d.refclassid = 'pg_namespace'::regclass AND d.classid = 'pg_class'::regclass
               AND d.refobjid = (SELECT oid FROM pg_namespace WHERE nspname = $1)
               AND d.deptype = 'n'
               AND c.relkind IN ('r', 'p') AND NOT c.relispartition
               AND c.relname <> ALL($2))
         SELECT c.relname::text, p.relname::text
         FROM c
         LEFT JOIN pg_constraint k
                ON k.conrelid = c.oid AND k.contype = 'f' AND k.conparentid = 0
         LEFT JOIN pg_class p ON p.oid = k.confrelid AND p.relnamespace = c.relnamespace
         WHERE EXISTS (SELECT 1 FROM pg_attribute a
                       WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                         AND a.attnum > 0 AND NOT a.attisdropped)
         ORDER BY 1, 2",
    )
    .bind(schema)
    .bind(NOT_TENANT_DATA)
    .fetch_all(exec)
    .await?;
    Ok(fk_order(rows))
}

/// Moves every sequence behind a column of `tables` (serial or identity) past the largest
/// value the column holds, never backwards: rows copied in with their own values (a move, a
/// restore) must not collide with the next insert. In the pool the sequences are shared, and a
/// sequence already past the copied values stays where it is.
pub async fn advance_sequences(
    cluster: &Cluster,
    conn: &mut PgConnection,
    schema: &Ident,
    tables: &[Ident],
) -> Result<(), DataPlaneError> {
    let owned: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name, column_name, sequence FROM (
             SELECT c.relname::text AS table_name, a.attname::text AS column_name,
                    pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname)
                        AS sequence
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = ANY($2)
               AND a.attnum > 0 AND NOT a.attisdropped) s
         WHERE sequence IS NOT NULL
         ORDER BY 1, 2",
    )
    .bind(schema.as_str())
    .bind(tables.iter().map(Ident::as_str).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| cluster.err(e))?;
    for (table, column, sequence) in owned {
        let stmt = Statement::new("SELECT setval($1::regclass, m) FROM (SELECT max(")
            .ident(&Ident::new(column)?)
            .push(") AS m FROM ")
            .qualified(schema, &Ident::new(table)?)
            .push(") x WHERE m > coalesce(pg_sequence_last_value($1::regclass), 0)");
        sqlx::query(stmt.into_sql())
            .bind(&sequence)
            .execute(&mut *conn)
            .await
            .map_err(|e| cluster.err(e))?;
    }
    Ok(())
}

/// Orders tables parents first from `(table, referenced)` pairs (Kahn's algorithm, ties by
/// name). A referenced table outside the set is ignored, a self-reference imposes nothing,
/// and tables left on a cycle follow in name order.
pub fn fk_order(edges: Vec<(String, Option<String>)>) -> Vec<String> {
    let tables: BTreeSet<String> = edges.iter().map(|(t, _)| t.clone()).collect();
    // parents[t]: the distinct other tables t references.
    let mut parents: BTreeMap<String, BTreeSet<String>> = tables
        .iter()
        .map(|t| (t.clone(), BTreeSet::new()))
        .collect();
    for (table, referenced) in edges {
        if let Some(p) = referenced.filter(|p| *p != table && tables.contains(p)) {
            parents.get_mut(&table).expect("listed").insert(p);
        }
    }
    let mut order = Vec::with_capacity(tables.len());
    let mut placed = BTreeSet::new();
    loop {
        let ready: Vec<String> = parents
            .iter()
            .filter(|(t, ps)| !placed.contains(*t) && ps.iter().all(|p| placed.contains(p)))
            .map(|(t, _)| t.clone())
            .collect();
        let Some(next) = ready.into_iter().next() else {
            break;
        };
        placed.insert(next.clone());
        order.push(next);
    }
    // What is left is on (or below) a cycle.
    order.extend(tables.into_iter().filter(|t| !placed.contains(t)));
    order
}

#[cfg(test)]
mod tests {
    use super::fk_order;

    fn edges(pairs: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        pairs
            .iter()
            .map(|(t, p)| (t.to_string(), p.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn parents_come_first_and_ties_break_by_name() {
        let order = fk_order(edges(&[
            ("observations", Some("encounters")),
            ("observations", Some("patients")),
            ("encounters", Some("patients")),
            ("appointments", Some("patients")),
            ("appointments", Some("appointment_types")),
            ("patients", None),
            ("appointment_types", None),
            ("audit_events", None),
        ]));
        assert_eq!(
            order,
            [
                "appointment_types",
                "audit_events",
                "patients",
                "appointments",
                "encounters",
                "observations"
            ]
        );
    }

    #[test]
    fn self_references_and_outside_tables_impose_nothing() {
        let order = fk_order(edges(&[
            ("staff", Some("staff")),
            ("staff", Some("elsewhere")),
            ("shifts", Some("staff")),
        ]));
        assert_eq!(order, ["staff", "shifts"]);
    }

    #[test]
    fn a_cycle_follows_the_rest_in_name_order() {
        let order = fk_order(edges(&[
            ("b", Some("a")),
            ("a", Some("b")),
            ("c", Some("a")),
            ("root", None),
        ]));
        assert_eq!(order, ["root", "a", "b", "c"]);
    }
}
