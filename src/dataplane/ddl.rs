//! A container's tenant tables as pg_dump-style DDL, rebuilt from the container's catalog
//! for a dump ([`super::dump`]) that restores into an empty database with `psql -f`. Objects
//! land in schema `public`: the catalog is read with `search_path` on the container, so type,
//! sequence and table names print unqualified and resolve there.
//!
//! What a dump recreates, in pg_dump's order:
//! - pre-data: the enum types and domains of the container (tables' columns use them), the
//!   sequences serial columns own, then each table with its columns (types, defaults,
//!   `GENERATED ALWAYS AS (…) STORED`, `GENERATED … AS IDENTITY`, NOT NULL) and CHECK
//!   constraints; a partitioned table with its `PARTITION BY` and every partition after it
//!   (`PARTITION OF … FOR VALUES …`, sub-partitions too);
//! - data: one COPY per table, generated columns left out (PostgreSQL computes them again);
//!   rows of a partitioned table go through the parent;
//! - post-data: each serial or identity sequence moved past the copied values, then primary
//!   keys, unique constraints, indexes and foreign keys (on a partitioned table without
//!   ONLY, so they reach every partition).
//!
//! Row-level security, policies, triggers, functions and tenantd's own tables are not tenant
//! data and are left out. Types other than enums and domains (composite, range) are not
//! recreated: a table using one restores only into a database that has it.

use sqlx::PgConnection;
use sqlx::postgres::types::Oid;

use super::{Cluster, DataPlaneError};
use crate::sql::{Ident, literal};

pub struct Column {
    pub name: Ident,
    sql_type: String,
    not_null: bool,
    default: Option<String>,
    /// `GENERATED ALWAYS AS (expr) STORED`: computed, never copied.
    generated: Option<String>,
    /// 'a' (ALWAYS) or 'd' (BY DEFAULT) for an identity column.
    identity: Option<char>,
    /// Whether a sequence (serial or identity) gives the column its values.
    sequenced: bool,
}

impl Column {
    /// Whether COPY carries the column (a generated column is computed instead).
    pub fn copied(&self) -> bool {
        self.generated.is_none()
    }
}

/// One tenant table, or a partition of one.
pub struct Table {
    pub name: Ident,
    pub columns: Vec<Column>,
    /// `PARTITION BY …` of a partitioned table.
    partition_key: Option<String>,
    /// (parent, `FOR VALUES …`) of a partition.
    partition_of: Option<(Ident, String)>,
    checks: Vec<(Ident, String)>,
    keys: Vec<(Ident, String)>,
    foreign_keys: Vec<(Ident, String)>,
    indexes: Vec<String>,
    /// Sequences serial columns own: created before the table, as CREATE SEQUENCE text.
    owned_sequences: Vec<String>,
    /// (sequence, column) of each of them, to be OWNED BY the restored column.
    owned: Vec<(Ident, Ident)>,
    /// The partitions, in name order (each may be partitioned again).
    partitions: Vec<Table>,
}

impl Table {
    /// The columns COPY carries.
    pub fn copied_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.copied())
    }

    /// The columns whose values a sequence gives, to move the sequence past the copied ones.
    pub fn sequenced_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.sequenced)
    }

    /// `ALTER SEQUENCE … OWNED BY` for the serial columns' sequences, so that the restored
    /// table's `pg_get_serial_sequence` finds them.
    fn owned_sequences_owners(&self) -> Vec<String> {
        self.owned
            .iter()
            .map(|(seq, col)| {
                format!(
                    "ALTER SEQUENCE public.{seq} OWNED BY public.{}.{col};\n\n",
                    self.name
                )
            })
            .collect()
    }
}

/// The container's types (enums, domains) as DDL, and its tenant tables (parents first, with
/// their partitions), read in the caller's snapshot.
pub struct Ddl {
    types: Vec<String>,
    pub tables: Vec<Table>,
}

impl Ddl {
    /// Types, sequences and tables (with partitions): everything before the data.
    pub fn pre_data(&self) -> String {
        let mut s = String::new();
        for ty in &self.types {
            s.push_str(ty);
        }
        for t in &self.tables {
            create_table(t, &mut s);
        }
        s
    }

    /// Sequences, keys, indexes and foreign keys: everything after the data. `max_values` is
    /// the highest copied value of each sequenced column, `(table, column, max)`.
    pub fn post_data(&self, max_values: &[(Ident, Ident, i64)]) -> String {
        let mut s = String::from("--\n-- Sequences, constraints and indexes\n--\n\n");
        for (table, column, max) in max_values {
            // Qualified and quoted inside the text argument, as pg_dump writes it.
            let target = literal(&format!("public.{table}")).expect("identifiers hold no NUL");
            let column = literal(column.as_str()).expect("identifiers hold no NUL");
            s.push_str(&format!(
                "SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence({target}, {column}), \
                 {max}, true);\n"
            ));
        }
        let all = || self.tables.iter().flat_map(with_partitions);
        for t in all() {
            for (name, def) in &t.keys {
                s.push_str(&format!("{} ADD CONSTRAINT {name} {def};\n", alter(t)));
            }
        }
        for t in all() {
            for index in &t.indexes {
                s.push_str(index);
                s.push_str(";\n");
            }
        }
        for t in all() {
            for (name, def) in &t.foreign_keys {
                s.push_str(&format!("{} ADD CONSTRAINT {name} {def};\n", alter(t)));
            }
        }
        s.push('\n');
        s
    }
}

/// A table and, recursively, its partitions.
fn with_partitions(t: &Table) -> Box<dyn Iterator<Item = &Table> + '_> {
    Box::new(std::iter::once(t).chain(t.partitions.iter().flat_map(with_partitions)))
}

/// `ALTER TABLE ONLY` for a plain table; a partitioned table's keys and foreign keys are
/// added without ONLY so that every partition gets them.
fn alter(t: &Table) -> String {
    if t.partition_key.is_some() {
        format!("ALTER TABLE public.{}", t.name)
    } else {
        format!("ALTER TABLE ONLY public.{}", t.name)
    }
}

fn create_table(t: &Table, s: &mut String) {
    for seq in &t.owned_sequences {
        s.push_str(seq);
    }
    s.push_str(&format!("--\n-- Name: {}; Type: TABLE\n--\n\n", t.name));
    if let Some((parent, bound)) = &t.partition_of {
        s.push_str(&format!(
            "CREATE TABLE public.{} PARTITION OF public.{parent} {bound}",
            t.name
        ));
    } else {
        let mut lines: Vec<String> = t.columns.iter().map(column_line).collect();
        for (name, def) in &t.checks {
            lines.push(format!("    CONSTRAINT {name} {def}"));
        }
        s.push_str(&format!(
            "CREATE TABLE public.{} (\n{}\n)",
            t.name,
            lines.join(",\n")
        ));
    }
    if let Some(key) = &t.partition_key {
        s.push_str(&format!(" PARTITION BY {key}"));
    }
    s.push_str(";\n\n");
    for seq in t.owned_sequences_owners() {
        s.push_str(&seq);
    }
    for p in &t.partitions {
        create_table(p, s);
    }
}

fn column_line(col: &Column) -> String {
    let mut line = format!("    {} {}", col.name, col.sql_type);
    if let Some(expr) = &col.generated {
        line.push_str(&format!(" GENERATED ALWAYS AS ({expr}) STORED"));
    } else if let Some(kind) = col.identity {
        line.push_str(match kind {
            'a' => " GENERATED ALWAYS AS IDENTITY",
            _ => " GENERATED BY DEFAULT AS IDENTITY",
        });
    } else if let Some(d) = &col.default {
        line.push_str(&format!(" DEFAULT {d}"));
    }
    if col.not_null {
        line.push_str(" NOT NULL");
    }
    line
}

/// Reads the DDL of the tenant tables of `schema` (parents first) and the types they use.
pub async fn read(
    cluster: &Cluster,
    conn: &mut PgConnection,
    schema: &Ident,
) -> Result<Ddl, DataPlaneError> {
    let names = super::tables::tenant_tables(cluster, &mut *conn, schema).await?;
    let mut tables = Vec::new();
    for name in &names {
        let oid: Option<Oid> = sqlx::query_scalar(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
        )
        .bind(schema.as_str())
        .bind(name.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| cluster.err(e))?;
        if let Some(oid) = oid {
            tables.push(read_table(cluster, conn, oid, name.clone(), None).await?);
        }
    }
    Ok(Ddl {
        types: read_types(cluster, conn, schema).await?,
        tables,
    })
}

/// Enum types, then domains, of `schema`, as CREATE statements (array types and the row
/// types of tables are PostgreSQL's own and come with what they belong to).
async fn read_types(
    cluster: &Cluster,
    conn: &mut PgConnection,
    schema: &Ident,
) -> Result<Vec<String>, DataPlaneError> {
    let err = |e| cluster.err(e);
    let enums: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT t.typname::text, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
         FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         JOIN pg_enum e ON e.enumtypid = t.oid
         WHERE n.nspname = $1 AND t.typtype = 'e'
         GROUP BY t.oid, t.typname ORDER BY t.oid",
    )
    .bind(schema.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    let mut out = Vec::new();
    for (name, labels) in enums {
        let labels = labels
            .iter()
            .map(|l| literal(l))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(format!(
            "--\n-- Name: {name}; Type: TYPE\n--\n\nCREATE TYPE public.{} AS ENUM ({});\n\n",
            Ident::new(name.clone())?,
            labels.join(", ")
        ));
    }
    // In creation order, so that a domain over another domain follows it.
    let domains: Vec<DomainRow> = sqlx::query_as(
        "SELECT t.typname::text, format_type(t.typbasetype, t.typtypmod), t.typnotnull,
                t.typdefault,
                coalesce(array_agg(format('CONSTRAINT %I %s', k.conname,
                                          pg_get_constraintdef(k.oid, true))
                                   ORDER BY k.conname)
                         FILTER (WHERE k.oid IS NOT NULL), '{}')
         FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         LEFT JOIN pg_constraint k ON k.contypid = t.oid
         WHERE n.nspname = $1 AND t.typtype = 'd'
         GROUP BY t.oid ORDER BY t.oid",
    )
    .bind(schema.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    for (name, base, not_null, default, checks) in domains {
        let mut def = format!(
            "--\n-- Name: {name}; Type: DOMAIN\n--\n\nCREATE DOMAIN public.{} AS {base}",
            Ident::new(name.clone())?
        );
        if let Some(d) = default {
            def.push_str(&format!(" DEFAULT {d}"));
        }
        if not_null {
            def.push_str(" NOT NULL");
        }
        for check in checks {
            def.push(' ');
            def.push_str(&check);
        }
        def.push_str(";\n\n");
        out.push(def);
    }
    Ok(out)
}

/// (name, base type, NOT NULL, default, constraints) of a domain.
type DomainRow = (String, String, bool, Option<String>, Vec<String>);

type ColumnRow = (String, String, bool, Option<String>, String, String, bool);

/// One table (or partition, with its parent and bound) and its partitions.
fn read_table<'a>(
    cluster: &'a Cluster,
    conn: &'a mut PgConnection,
    oid: Oid,
    name: Ident,
    partition_of: Option<(Ident, String)>,
) -> std::pin::Pin<Box<dyn Future<Output = Result<Table, DataPlaneError>> + Send + 'a>> {
    Box::pin(async move {
        let err = |e| cluster.err(e);
        let columns: Vec<ColumnRow> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    pg_get_expr(d.adbin, d.adrelid), a.attgenerated::text, a.attidentity::text,
                    EXISTS (SELECT 1 FROM pg_depend s
                            JOIN pg_class q ON q.oid = s.objid AND q.relkind = 'S'
                            WHERE s.refobjid = a.attrelid AND s.refobjsubid = a.attnum
                              AND s.deptype IN ('a', 'i'))
             FROM pg_attribute a
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
        )
        .bind(oid)
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
        // Constraints a partition inherits from its parent come with PARTITION OF.
        let constraints: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT conname::text, contype::text, pg_get_constraintdef(oid, true)
             FROM pg_constraint WHERE conrelid = $1 AND contype IN ('c', 'p', 'u', 'f')
               AND conparentid = 0 AND NOT (contype = 'c' AND coninhcount > 0)
             ORDER BY contype DESC, conname",
        )
        .bind(oid)
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
        // Indexes of a partition that belong to a parent's index are built by the parent's.
        let indexes: Vec<(String, bool, String)> = sqlx::query_as(
            "SELECT i.relname::text, x.indisunique, pg_get_indexdef(x.indexrelid)
             FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
             WHERE x.indrelid = $1 AND NOT i.relispartition AND NOT EXISTS (
                 SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid
                   AND k.conrelid = x.indrelid AND k.contype IN ('p', 'u', 'x'))
             ORDER BY i.relname",
        )
        .bind(oid)
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
        let owned: Vec<(String, String)> = sqlx::query_as(
            "SELECT q.relname::text, a.attname::text FROM pg_depend s
             JOIN pg_class q ON q.oid = s.objid AND q.relkind = 'S'
             JOIN pg_attribute a ON a.attrelid = s.refobjid AND a.attnum = s.refobjsubid
             WHERE s.refobjid = $1 AND s.deptype = 'a' ORDER BY a.attnum",
        )
        .bind(oid)
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
        let (partition_key,): (Option<String>,) = sqlx::query_as(
            "SELECT CASE WHEN relkind = 'p' THEN pg_get_partkeydef(oid) END
             FROM pg_class WHERE oid = $1",
        )
        .bind(oid)
        .fetch_one(&mut *conn)
        .await
        .map_err(err)?;
        let children: Vec<(Oid, String, String)> = sqlx::query_as(
            "SELECT c.oid, c.relname::text, pg_get_expr(c.relpartbound, c.oid)
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = $1 AND c.relispartition ORDER BY c.relname",
        )
        .bind(oid)
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
        let mut t = Table {
            columns: columns
                .into_iter()
                .map(
                    |(name, sql_type, not_null, default, generated, identity, sequenced)| {
                        let generated = (generated == "s").then(|| default.clone()).flatten();
                        Ok(Column {
                            name: Ident::new(name)?,
                            sql_type,
                            not_null,
                            default: if generated.is_some() { None } else { default },
                            generated,
                            identity: identity.chars().next(),
                            sequenced,
                        })
                    },
                )
                .collect::<Result<_, DataPlaneError>>()?,
            partition_key,
            partition_of,
            checks: Vec::new(),
            keys: Vec::new(),
            foreign_keys: Vec::new(),
            indexes: Vec::new(),
            owned_sequences: Vec::new(),
            owned: Vec::new(),
            partitions: Vec::new(),
            name,
        };
        for (name, kind, def) in constraints {
            let name = Ident::new(name)?;
            match kind.as_str() {
                "c" => t.checks.push((name, def)),
                "f" => t.foreign_keys.push((name, def)),
                _ => t.keys.push((name, def)),
            }
        }
        for (name, unique, def) in indexes {
            // pg_get_indexdef always qualifies the table with the source schema (and says
            // ON ONLY for a partitioned one); keep the method and columns, name the
            // restored table.
            let using = def.find(" USING ").ok_or_else(|| {
                DataPlaneError::Invariant(format!("unexpected index definition {def:?}"))
            })?;
            t.indexes.push(format!(
                "CREATE {}INDEX {} ON public.{}{}",
                if unique { "UNIQUE " } else { "" },
                Ident::new(name)?,
                t.name,
                &def[using..]
            ));
        }
        for (seq, col) in owned {
            let seq = Ident::new(seq)?;
            let col = Ident::new(col)?;
            let options: (String, i64, i64, i64, i64, i64, bool) = sqlx::query_as(
                "SELECT format_type(s.seqtypid, NULL), s.seqincrement, s.seqmin, s.seqmax,
                        s.seqstart, s.seqcache, s.seqcycle
                 FROM pg_sequence s JOIN pg_class q ON q.oid = s.seqrelid
                 JOIN pg_depend d ON d.objid = q.oid AND d.deptype = 'a'
                 WHERE d.refobjid = $1 AND q.relname = $2",
            )
            .bind(oid)
            .bind(seq.as_str())
            .fetch_one(&mut *conn)
            .await
            .map_err(err)?;
            let (ty, increment, min, max, start, cache, cycle) = options;
            t.owned_sequences.push(format!(
                "--\n-- Name: {seq}; Type: SEQUENCE\n--\n\nCREATE SEQUENCE public.{seq} AS {ty} \
                 INCREMENT BY {increment} MINVALUE {min} MAXVALUE {max} START WITH {start} \
                 CACHE {cache}{};\n\n",
                if cycle { " CYCLE" } else { "" }
            ));
            t.owned.push((seq, col));
        }
        for (child, child_name, bound) in children {
            let child_name = Ident::new(child_name)?;
            let parent = (t.name.clone(), bound);
            let p = read_table(cluster, &mut *conn, child, child_name, Some(parent)).await?;
            t.partitions.push(p);
        }
        Ok(t)
    })
}
