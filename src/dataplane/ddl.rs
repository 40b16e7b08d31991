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

/// Reads the DDL of the tenant tables of `schema` (parents first) and the types they use: a
/// fixed number of set-based catalog queries, whatever the number of tables.
pub async fn read(
    cluster: &Cluster,
    conn: &mut PgConnection,
    schema: &Ident,
) -> Result<Ddl, DataPlaneError> {
    let err = |e| cluster.err(e);
    let names = super::tables::tenant_tables(cluster, &mut *conn, schema).await?;
    // Every table and partition of the schema, found through pg_depend's index (see
    // tables::names_in), with its partition key, parent and bound.
    let rels: Vec<RelRow> = sqlx::query_as(
        "SELECT c.oid, c.relname::text,
                CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
                (SELECT i.inhparent FROM pg_inherits i WHERE i.inhrelid = c.oid
                   AND c.relispartition),
                CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END
         FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
         WHERE d.refclassid = 'pg_namespace'::regclass AND d.classid = 'pg_class'::regclass
           AND d.refobjid = (SELECT oid FROM pg_namespace WHERE nspname = $1)
           AND d.deptype = 'n' AND c.relkind IN ('r', 'p')
         ORDER BY c.relname",
    )
    .bind(schema.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    // The tenant tables and, recursively, their partitions.
    let mut wanted: Vec<Oid> = rels
        .iter()
        .filter(|r| r.3.is_none() && names.iter().any(|n| n.as_str() == r.1))
        .map(|r| r.0)
        .collect();
    let mut i = 0;
    while i < wanted.len() {
        let parent = wanted[i];
        wanted.extend(rels.iter().filter(|r| r.3 == Some(parent)).map(|r| r.0));
        i += 1;
    }
    let mut flat = read_tables(cluster, conn, &rels, &wanted).await?;
    // Partitions under their parents, in name order (rels is sorted by name).
    let parent_of: std::collections::HashMap<Oid, Oid> =
        rels.iter().filter_map(|r| Some((r.0, r.3?))).collect();
    for oid in wanted.iter().rev() {
        if let Some(parent) = parent_of.get(oid) {
            let child = flat.remove(oid).expect("read");
            flat.get_mut(parent)
                .expect("read")
                .partitions
                .insert(0, child);
        }
    }
    let tables = names
        .iter()
        .filter_map(|n| {
            let (oid, ..) = rels.iter().find(|r| r.3.is_none() && r.1 == n.as_str())?;
            flat.remove(oid)
        })
        .collect();
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
    // (name, 'e' or 'd', enum labels, domain base type, NOT NULL, default, constraints), in
    // creation order, so that a domain over another domain follows it.
    let types: Vec<TypeRow> = sqlx::query_as(
        "SELECT t.typname::text, t.typtype::text,
                ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid
                      ORDER BY e.enumsortorder),
                format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typdefault,
                ARRAY(SELECT format('CONSTRAINT %I %s', k.conname,
                                    pg_get_constraintdef(k.oid, true))
                      FROM pg_constraint k WHERE k.contypid = t.oid ORDER BY k.conname)
         FROM pg_depend d JOIN pg_type t ON t.oid = d.objid
         WHERE d.refclassid = 'pg_namespace'::regclass AND d.classid = 'pg_type'::regclass
           AND d.refobjid = (SELECT oid FROM pg_namespace WHERE nspname = $1)
           AND d.deptype = 'n' AND t.typtype IN ('e', 'd')
         ORDER BY t.typtype DESC, t.oid",
    )
    .bind(schema.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    let mut out = Vec::new();
    for (name, kind, labels, base, not_null, default, checks) in types {
        let ident = Ident::new(name.clone())?;
        if kind == "e" {
            let labels = labels
                .iter()
                .map(|l| literal(l))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(format!(
                "--\n-- Name: {name}; Type: TYPE\n--\n\nCREATE TYPE public.{ident} AS ENUM ({});\n\n",
                labels.join(", ")
            ));
            continue;
        }
        let mut def = format!(
            "--\n-- Name: {name}; Type: DOMAIN\n--\n\nCREATE DOMAIN public.{ident} AS {base}"
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

/// (oid, name, partition key, parent, partition bound) of a table or partition.
type RelRow = (Oid, String, Option<String>, Option<Oid>, Option<String>);

/// (name, kind, enum labels, domain base type, NOT NULL, default, constraints) of a type.
type TypeRow = (
    String,
    String,
    Vec<String>,
    String,
    bool,
    Option<String>,
    Vec<String>,
);

/// (table, name, type, NOT NULL, default, generated, identity, sequenced) of a column.
type ColumnRow = (
    Oid,
    String,
    String,
    bool,
    Option<String>,
    String,
    String,
    bool,
);

/// (table, sequence, column, type, increment, min, max, start, cache, cycle) of a sequence a
/// serial column owns.
type SequenceRow = (Oid, String, String, String, i64, i64, i64, i64, i64, bool);

/// The tables (and partitions) `wanted`, keyed by oid, partitions not attached yet.
async fn read_tables(
    cluster: &Cluster,
    conn: &mut PgConnection,
    rels: &[RelRow],
    wanted: &[Oid],
) -> Result<std::collections::HashMap<Oid, Table>, DataPlaneError> {
    let err = |e| cluster.err(e);
    let columns: Vec<ColumnRow> = sqlx::query_as(
        "SELECT a.attrelid, a.attname::text, format_type(a.atttypid, a.atttypmod),
                a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attgenerated::text,
                a.attidentity::text,
                EXISTS (SELECT 1 FROM pg_depend s
                        JOIN pg_class q ON q.oid = s.objid AND q.relkind = 'S'
                        WHERE s.refobjid = a.attrelid AND s.refobjsubid = a.attnum
                          AND s.deptype IN ('a', 'i'))
         FROM pg_attribute a
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attrelid, a.attnum",
    )
    .bind(wanted)
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    // Constraints a partition inherits from its parent come with PARTITION OF.
    let constraints: Vec<(Oid, String, String, String)> = sqlx::query_as(
        "SELECT conrelid, conname::text, contype::text, pg_get_constraintdef(oid, true)
         FROM pg_constraint WHERE conrelid = ANY($1) AND contype IN ('c', 'p', 'u', 'f')
           AND conparentid = 0 AND NOT (contype = 'c' AND coninhcount > 0)
         ORDER BY conrelid, contype DESC, conname",
    )
    .bind(wanted)
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    // Indexes of a partition that belong to a parent's index are built by the parent's.
    let indexes: Vec<(Oid, String, bool, String)> = sqlx::query_as(
        "SELECT x.indrelid, i.relname::text, x.indisunique, pg_get_indexdef(x.indexrelid)
         FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
         WHERE x.indrelid = ANY($1) AND NOT i.relispartition AND NOT EXISTS (
             SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid
               AND k.conrelid = x.indrelid AND k.contype IN ('p', 'u', 'x'))
         ORDER BY x.indrelid, i.relname",
    )
    .bind(wanted)
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    let sequences: Vec<SequenceRow> = sqlx::query_as(
        "SELECT s.refobjid, q.relname::text, a.attname::text, format_type(p.seqtypid, NULL),
                p.seqincrement, p.seqmin, p.seqmax, p.seqstart, p.seqcache, p.seqcycle
         FROM pg_depend s
         JOIN pg_class q ON q.oid = s.objid AND q.relkind = 'S'
         JOIN pg_sequence p ON p.seqrelid = q.oid
         JOIN pg_attribute a ON a.attrelid = s.refobjid AND a.attnum = s.refobjsubid
         WHERE s.classid = 'pg_class'::regclass AND s.refclassid = 'pg_class'::regclass
           AND s.refobjid = ANY($1) AND s.deptype = 'a'
         ORDER BY s.refobjid, a.attnum",
    )
    .bind(wanted)
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    let mut out = std::collections::HashMap::new();
    for &oid in wanted {
        let (_, name, partition_key, parent, bound) =
            rels.iter().find(|r| r.0 == oid).expect("wanted from rels");
        let name = Ident::new(name.clone())?;
        let partition_of = match (parent, bound) {
            (Some(p), Some(bound)) => {
                let parent = &rels.iter().find(|r| r.0 == *p).expect("parent in schema").1;
                Some((Ident::new(parent.clone())?, bound.clone()))
            }
            _ => None,
        };
        let mut t = Table {
            columns: Vec::new(),
            partition_key: partition_key.clone(),
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
        for (_, name, sql_type, not_null, default, generated, identity, sequenced) in
            columns.iter().filter(|c| c.0 == oid)
        {
            let generated = (generated == "s").then(|| default.clone()).flatten();
            t.columns.push(Column {
                name: Ident::new(name.clone())?,
                sql_type: sql_type.clone(),
                not_null: *not_null,
                default: if generated.is_some() {
                    None
                } else {
                    default.clone()
                },
                generated,
                identity: identity.chars().next(),
                sequenced: *sequenced,
            });
        }
        for (_, name, kind, def) in constraints.iter().filter(|c| c.0 == oid) {
            let entry = (Ident::new(name.clone())?, def.clone());
            match kind.as_str() {
                "c" => t.checks.push(entry),
                "f" => t.foreign_keys.push(entry),
                _ => t.keys.push(entry),
            }
        }
        for (_, name, unique, def) in indexes.iter().filter(|i| i.0 == oid) {
            // pg_get_indexdef always qualifies the table with the source schema (and says
            // ON ONLY for a partitioned one); keep the method and columns, name the
            // restored table.
            let using = def.find(" USING ").ok_or_else(|| {
                DataPlaneError::Invariant(format!("unexpected index definition {def:?}"))
            })?;
            t.indexes.push(format!(
                "CREATE {}INDEX {} ON public.{}{}",
                if *unique { "UNIQUE " } else { "" },
                Ident::new(name.clone())?,
                t.name,
                &def[using..]
            ));
        }
        for (_, seq, col, ty, increment, min, max, start, cache, cycle) in
            sequences.iter().filter(|s| s.0 == oid)
        {
            let seq = Ident::new(seq.clone())?;
            t.owned_sequences.push(format!(
                "--\n-- Name: {seq}; Type: SEQUENCE\n--\n\nCREATE SEQUENCE public.{seq} AS {ty} \
                 INCREMENT BY {increment} MINVALUE {min} MAXVALUE {max} START WITH {start} \
                 CACHE {cache}{};\n\n",
                if *cycle { " CYCLE" } else { "" }
            ));
            t.owned.push((seq, Ident::new(col.clone())?));
        }
        out.insert(oid, t);
    }
    Ok(out)
}
