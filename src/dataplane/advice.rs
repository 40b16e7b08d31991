//! What the database linters users already run (Supabase's splinter: lints 0001, 0004, 0009
//! and 0011) would report about a tenant schema's own tables and functions, as advice: never
//! a refusal (docs/tenant-schema.md). Read from the throwaway container the conventions are
//! tried in ([`super::conventions`]), after the last version, so it describes what every
//! container gets. tenantd's own objects (`tenantd_…`) are left out: they pass these lints.

use sqlx::PgConnection;

use super::{Cluster, DataPlaneError};
use crate::sql::Ident;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advice {
    /// The splinter lint's name (`unindexed_foreign_keys`, `no_primary_key`,
    /// `duplicate_index`, `function_search_path_mutable`).
    pub lint: &'static str,
    /// The table or function.
    pub object: String,
    pub detail: String,
}

/// The queries, each returning (object, detail) for the schema in `$1`.
const CHECKS: [(&str, &str); 4] = [
    (
        "unindexed_foreign_keys",
        // No index whose leading columns are the foreign key's (in any order): deleting or
        // updating a referenced row scans the whole referencing table (the tenant's rows).
        "SELECT c.relname::text,
                format('foreign key %s (%s) has no index leading with its columns: deleting a \
                        referenced row scans the table', k.conname,
                       (SELECT string_agg(a.attname, ', ' ORDER BY u.i)
                        FROM unnest(k.conkey) WITH ORDINALITY u(n, i)
                        JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n))
         FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
         WHERE k.contype = 'f' AND c.relnamespace = quote_ident($1)::regnamespace
           AND c.relname NOT LIKE 'tenantd\\_%'
           AND NOT EXISTS (
               SELECT 1 FROM pg_index i
               WHERE i.indrelid = k.conrelid
                 AND array_length(k.conkey, 1) <= i.indnkeyatts
                 AND (SELECT array_agg(x ORDER BY x)
                      FROM unnest((string_to_array(i.indkey::text, ' ')::smallint[])
                                  [1:array_length(k.conkey, 1)]) x)
                     = (SELECT array_agg(x ORDER BY x) FROM unnest(k.conkey) x))
         ORDER BY 1, 2",
    ),
    (
        "no_primary_key",
        "SELECT c.relname::text,
                'no primary key: rows cannot be told apart, and logical replication cannot \
                 apply updates or deletes to it'
         FROM pg_class c
         WHERE c.relnamespace = quote_ident($1)::regnamespace AND c.relkind IN ('r', 'p')
           AND NOT c.relispartition AND c.relname NOT LIKE 'tenantd\\_%'
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                           WHERE k.conrelid = c.oid AND k.contype = 'p')
         ORDER BY 1",
    ),
    (
        "duplicate_index",
        "SELECT t.relname::text,
                format('indexes %s are identical: every write updates each of them',
                       string_agg(x.relname, ', ' ORDER BY x.relname))
         FROM pg_index i
         JOIN pg_class x ON x.oid = i.indexrelid
         JOIN pg_class t ON t.oid = i.indrelid
         WHERE t.relnamespace = quote_ident($1)::regnamespace AND t.relname NOT LIKE 'tenantd\\_%'
         GROUP BY t.relname, i.indrelid, i.indkey::text, i.indclass::text,
                  i.indcollation::text, coalesce(pg_get_expr(i.indexprs, i.indrelid), ''),
                  coalesce(pg_get_expr(i.indpred, i.indrelid), '')
         HAVING count(*) > 1
         ORDER BY 1, 2",
    ),
    (
        "function_search_path_mutable",
        "SELECT p.proname::text,
                format('function %s(%s) does not set search_path: what it runs depends on the \
                        caller''s', p.proname, pg_get_function_identity_arguments(p.oid))
         FROM pg_proc p
         WHERE p.pronamespace = quote_ident($1)::regnamespace AND p.prokind IN ('f', 'p')
           AND p.proname NOT LIKE 'tenantd\\_%'
           AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) s
                           WHERE s LIKE 'search\\_path=%')
         ORDER BY 1, 2",
    ),
];

/// The advice for `schema`, read on `conn`.
pub async fn read(
    cluster: &Cluster,
    conn: &mut PgConnection,
    schema: &Ident,
) -> Result<Vec<Advice>, DataPlaneError> {
    let mut out = Vec::new();
    for (lint, sql) in CHECKS {
        let rows: Vec<(String, String)> = sqlx::query_as(sql)
            .bind(schema.as_str())
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| cluster.err(e))?;
        out.extend(rows.into_iter().map(|(object, detail)| Advice {
            lint,
            object,
            detail,
        }));
    }
    Ok(out)
}
