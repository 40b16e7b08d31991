//! Change capture for moving a tenant while it writes (docs/tier-changes.md, "Online
//! moves"): PostgreSQL's own logical decoding, read through SQL.
//!
//! A [`Capture`] is a publication of the tenant's tables, row-filtered to its `tenant_id`
//! (in the pool, neighbours' changes are never decoded into it), and a logical replication
//! slot with the built-in `pgoutput` plugin, both named after the operation and both in the
//! source container's database. From the moment the slot exists, every change the tenant
//! commits is kept for us. [`Capture::drain`] reads the decoded changes with
//! `pg_logical_slot_peek_binary_changes` (no replication connection needed), applies them to
//! the target container transaction by transaction, and only then advances the slot: a crash
//! between the two re-applies the same changes, which is harmless because applying is
//! idempotent (inserts are upserts by primary key, updates and deletes go by key).
//!
//! Idempotent application is also what makes the snapshot copy correct without an exported
//! snapshot: the copy is taken after the slot was created, so replaying every change from the
//! slot's position over it converges to the source, key by key (the last change to a key
//! decides it; a key no change touched is as the copy has it).
//!
//! Values travel in their text form and are turned back into values by each type's input
//! function, through a composite literal of the target table's row type: every type
//! round-trips (arrays, enums, json byte for byte, domains), with no type name spliced into
//! SQL. Both ends run with [`super::copy::PINNED_SETTINGS`], so a timestamp's text form does
//! not depend on a session's time zone. The apply session sets `session_replication_role =
//! replica`, as PostgreSQL's own apply workers do: foreign keys are not re-checked for
//! changes the copy already holds, and triggers do not fire a second time (rows that
//! triggers wrote on the source arrive as changes of their own).
//!
//! [`Capture::stop`] drops the slot and the publication; it is idempotent and every path out
//! of a move calls it. [`leftovers`] lists what no operation should still hold: a slot left
//! behind would retain WAL forever.

use std::collections::HashMap;

use uuid::Uuid;

use super::{Cluster, Container, DataPlaneError};
use crate::sql::{Ident, Statement};

/// Slots and publications of moves are named this, then the operation id.
pub const PREFIX: &str = "tenantd_move_";
/// The schema, in a target's database, of the tables of keys the catch-up wrote.
pub const TRACKING_SCHEMA: &str = "tenantd_moves";

/// The publication and slot of one move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub name: Ident,
}

/// How [`Capture::start`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    Capturing,
    /// Transactions elsewhere in the cluster ran longer than this; nothing was left behind.
    Waited(std::time::Duration),
}

/// What one [`Capture::drain`] applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    pub transactions: u64,
    pub changes: u64,
    /// Bytes of WAL the slot still holds back after the round (the lag).
    pub lag_bytes: i64,
    /// Bytes of WAL the next read decodes again before reaching new changes
    /// ([`Capture::standing`]).
    pub decode_backlog: i64,
    /// Every change before the round's `upto` is applied.
    pub caught_up: bool,
}

impl Round {
    /// WAL the slot keeps from being recycled on the source: the lag and the backlog.
    pub fn retained_bytes(&self) -> i64 {
        self.lag_bytes + self.decode_backlog
    }
}

impl Capture {
    pub fn for_operation(operation_id: Uuid) -> Capture {
        Capture {
            name: Ident::new(format!("{PREFIX}{}", operation_id.simple()))
                .expect("prefix and hex are a valid identifier"),
        }
    }

    /// Creates the publication of `tables` (in `src.schema`) filtered to the tenant, then the
    /// slot, waiting at most `wait` for the transactions running elsewhere to end.
    /// Idempotent: what exists is kept (a retry after a crash must not move the slot, whose
    /// position is where replay starts).
    pub async fn start(
        &self,
        cluster: &Cluster,
        src: &Container,
        tables: &[Ident],
        wait: std::time::Duration,
    ) -> Result<Started, DataPlaneError> {
        let pool = cluster.database(&src.database);
        let err = |e| cluster.err(e);
        let published: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM pg_publication WHERE pubname = $1")
                .bind(self.name.as_str())
                .fetch_optional(&pool)
                .await
                .map_err(err)?;
        if published.is_none() {
            let mut stmt = Statement::new("CREATE PUBLICATION ")
                .ident(&self.name)
                .push(" FOR TABLE ");
            for (i, t) in tables.iter().enumerate() {
                if i > 0 {
                    stmt = stmt.push(", ");
                }
                stmt = stmt
                    .qualified(&src.schema, t)
                    .push(" WHERE (tenant_id = ")
                    .literal(&src.tenant_id.to_string())?
                    .push("::uuid)");
            }
            let stmt = stmt.push(" WITH (publish_via_partition_root = true)");
            super::converged(cluster.exec(&pool, stmt).await)?;
        }
        let slot: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1")
                .bind(self.name.as_str())
                .fetch_optional(&pool)
                .await
                .map_err(err)?;
        if slot.is_some() {
            return Ok(Started::Capturing);
        }
        // Creating the slot waits until every transaction running now, in any database of
        // the cluster, has ended (from that consistent point on the slot sees every commit).
        // One idle in a transaction elsewhere must not hold the move: past `wait`, give up.
        let Some(mut conn) = cluster.connect_once(&src.database).await? else {
            return Err(DataPlaneError::Invariant(format!(
                "database {} is gone",
                src.database
            )));
        };
        let timeout = Statement::new("SET statement_timeout = ").integer(wait.as_millis() as i64);
        sqlx::raw_sql(timeout.into_sql())
            .execute(&mut conn)
            .await
            .map_err(err)?;
        let created = sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(self.name.as_str())
            .execute(&mut conn)
            .await;
        match created {
            Ok(_) => Ok(Started::Capturing),
            Err(e) if crate::sqlstate::is_already_created(&e) => Ok(Started::Capturing),
            Err(e) if crate::sqlstate::code(&e).as_deref() == Some("57014") => {
                cluster
                    .exec(
                        &pool,
                        Statement::new("DROP PUBLICATION IF EXISTS ").ident(&self.name),
                    )
                    .await?;
                Ok(Started::Waited(wait))
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Where the keys of the rows the catch-up wrote are kept, in the target's database: a
    /// table of this name in the schema `tenantd_moves` (the fenced verification digests
    /// those rows only, [`super::copy::digest_keys`]). A key is marked `verified` when its
    /// row was found equal on both ends before the fence ([`Self::mark_verified`]); writing
    /// it again clears the mark.
    fn tracking(&self) -> (Ident, Ident) {
        (Ident::from_static(TRACKING_SCHEMA), self.name.clone())
    }

    /// Creates the table of written keys on the target (or brings one made by an earlier
    /// build up to date). Idempotent.
    pub async fn prepare_target(
        &self,
        cluster: &Cluster,
        dst: &Container,
    ) -> Result<(), DataPlaneError> {
        let pool = cluster.database(&dst.database);
        let (schema, table) = self.tracking();
        super::converged(
            cluster
                .exec(
                    &pool,
                    Statement::new("CREATE SCHEMA IF NOT EXISTS ").ident(&schema),
                )
                .await,
        )?;
        super::converged(
            cluster
                .exec(
                    &pool,
                    Statement::new("CREATE TABLE IF NOT EXISTS ")
                        .qualified(&schema, &table)
                        .push(
                            " (tbl text NOT NULL, key text[] NOT NULL, \
                             verified boolean NOT NULL DEFAULT false, PRIMARY KEY (tbl, key))",
                        ),
                )
                .await,
        )?;
        cluster
            .exec(
                &pool,
                Statement::new("ALTER TABLE ")
                    .qualified(&schema, &table)
                    .push(" ADD COLUMN IF NOT EXISTS verified boolean NOT NULL DEFAULT false"),
            )
            .await
    }

    /// Marks the given keys of `table` (text forms of its key columns) as found equal on
    /// both ends.
    pub async fn mark_verified(
        &self,
        cluster: &Cluster,
        dst: &Container,
        table: &Ident,
        keys: &serde_json::Value,
    ) -> Result<(), DataPlaneError> {
        let (schema, tracking) = self.tracking();
        let stmt = Statement::new("UPDATE ")
            .qualified(&schema, &tracking)
            .push(
                " SET verified = true WHERE tbl = $1 AND key IN \
                 (SELECT ARRAY(SELECT jsonb_array_elements_text(e)) \
                  FROM jsonb_array_elements($2::jsonb) AS e)",
            );
        sqlx::query(stmt.into_sql())
            .bind(table.as_str())
            .bind(keys)
            .execute(&cluster.database(&dst.database))
            .await
            .map_err(|e| cluster.err(e))?;
        Ok(())
    }

    /// The tables with rows the catch-up wrote on the target that nobody marked verified
    /// since.
    pub async fn tables_unverified(
        &self,
        cluster: &Cluster,
        dst: &Container,
    ) -> Result<Vec<String>, DataPlaneError> {
        let (schema, tracking) = self.tracking();
        let stmt = Statement::new("SELECT DISTINCT tbl FROM ")
            .qualified(&schema, &tracking)
            .push(" WHERE NOT verified");
        let tables: Vec<(String,)> = sqlx::query_as(stmt.into_sql())
            .fetch_all(&cluster.database(&dst.database))
            .await
            .map_err(|e| cluster.err(e))?;
        Ok(tables.into_iter().map(|(t,)| t).collect())
    }

    /// Up to `limit` keys (the text forms of the key columns) of rows of `table` the
    /// catch-up wrote on the target and nobody marked verified since, after `after` in key
    /// order.
    pub async fn written_keys(
        &self,
        cluster: &Cluster,
        dst: &Container,
        table: &Ident,
        after: Option<&[String]>,
        limit: i64,
    ) -> Result<Vec<Vec<String>>, DataPlaneError> {
        let (schema, tracking) = self.tracking();
        let stmt = Statement::new("SELECT key FROM ")
            .qualified(&schema, &tracking)
            .push(
                " WHERE tbl = $1 AND NOT verified AND ($2::text[] IS NULL OR key > $2) \
                 ORDER BY key LIMIT $3",
            );
        let keys: Vec<(Vec<String>,)> = sqlx::query_as(stmt.into_sql())
            .bind(table.as_str())
            .bind(after)
            .bind(limit)
            .fetch_all(&cluster.database(&dst.database))
            .await
            .map_err(|e| cluster.err(e))?;
        Ok(keys.into_iter().map(|(k,)| k).collect())
    }

    /// The source's current WAL position: a change committed before now is at or before it.
    pub async fn position(
        &self,
        cluster: &Cluster,
        src: &Container,
    ) -> Result<u64, DataPlaneError> {
        let (lsn,): (i64,) =
            sqlx::query_as("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint")
                .fetch_one(&cluster.database(&src.database))
                .await
                .map_err(|e| cluster.err(e))?;
        Ok(lsn as u64)
    }

    /// Applies up to about `max_changes` captured changes (whole transactions) to `dst`, then
    /// advances the slot past them. With `upto`, only changes before that position, and once
    /// all of those are applied the slot is advanced to it ([`Round::caught_up`]). Decoding
    /// reads only WAL the server has flushed, so this first waits for `upto` to be flushed
    /// (with `synchronous_commit = off` a commit returns before).
    pub async fn drain(
        &self,
        src_cluster: &Cluster,
        src: &Container,
        dst_cluster: &Cluster,
        dst: &Container,
        upto: Option<u64>,
        max_changes: i32,
    ) -> Result<Round, DataPlaneError> {
        let serr = |e| src_cluster.err(e);
        let derr = |e| dst_cluster.err(e);
        if let Some(upto) = upto {
            self.wait_flushed(src_cluster, src, upto).await?;
        }
        let mut src_tx = super::copy::pinned_transaction(src_cluster, &src.database).await?;
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1::text::name, $3::text::pg_lsn,
                 $2::int, 'proto_version', '1', 'publication_names', $1::text)",
        )
        .bind(self.name.as_str())
        .bind(max_changes)
        .bind(upto.map(lsn_text))
        .fetch_all(&mut *src_tx)
        .await
        .map_err(serr)?;
        src_tx.commit().await.map_err(serr)?;
        // Fewer rows than asked for: decoding reached `upto`, nothing before it is left.
        let complete = upto.filter(|_| rows.len() < max_changes as usize);

        let mut round = Round::default();
        let mut relations: HashMap<u32, Relation> = HashMap::new();
        let mut targets: HashMap<String, Target> = HashMap::new();
        let mut dst_tx = super::copy::pinned_transaction(dst_cluster, &dst.database).await?;
        sqlx::raw_sql("SET LOCAL session_replication_role = replica")
            .execute(&mut *dst_tx)
            .await
            .map_err(derr)?;
        let mut applied_to: Option<u64> = None;
        let mut touched: HashMap<String, Vec<String>> = HashMap::new();
        let mut pending: Vec<(String, Write)> = Vec::new();
        for (data,) in &rows {
            match parse(data)? {
                Message::Relation(r) => {
                    if r.namespace != src.schema.as_str() {
                        return Err(DataPlaneError::Invariant(format!(
                            "captured a change of {}.{}, outside the tenant's container",
                            r.namespace, r.name
                        )));
                    }
                    relations.insert(r.id, r);
                }
                Message::Commit { end_lsn } => {
                    round.transactions += 1;
                    applied_to = Some(end_lsn);
                }
                Message::Change(change) => {
                    let rel = relations.get(&change.relation()).ok_or_else(|| {
                        DataPlaneError::Invariant("a change before its relation".into())
                    })?;
                    if !targets.contains_key(&rel.name) {
                        let t = Target::read(dst_cluster, &mut dst_tx, dst, &rel.name).await?;
                        targets.insert(rel.name.clone(), t);
                    }
                    let target = &targets[&rel.name];
                    if let Some(c) = rel
                        .columns
                        .iter()
                        .find(|c| !target.columns.iter().any(|(t, _)| t.as_str() == c.name))
                    {
                        return Err(DataPlaneError::Invariant(format!(
                            "table {} gained column {} on the source during the move (a \
                             schema change, such as a rollout); the target does not have it",
                            rel.name, c.name
                        )));
                    }
                    for key in target.keys_of(rel, &change)? {
                        touched.entry(rel.name.clone()).or_default().push(key);
                    }
                    match target.apply(rel, &change)? {
                        Apply::Writes(writes) => {
                            pending.extend(writes.into_iter().map(|w| (rel.name.clone(), w)));
                        }
                        Apply::Partial(stmt, literals) => {
                            // It merges with the row as it is: everything before it first.
                            flush(&mut dst_tx, dst_cluster, &targets, &mut pending).await?;
                            let mut q = sqlx::query(stmt.into_sql());
                            for l in literals {
                                q = q.bind(l);
                            }
                            q.execute(&mut *dst_tx).await.map_err(derr)?;
                        }
                    }
                    round.changes += 1;
                }
                Message::Truncate => {
                    return Err(DataPlaneError::Invariant(
                        "a tenant table was truncated during the move".into(),
                    ));
                }
                Message::Other => {}
            }
        }
        flush(&mut dst_tx, dst_cluster, &targets, &mut pending).await?;
        // The keys written, in the same transaction as the rows.
        let (schema, tracking) = self.tracking();
        for (table, keys) in touched {
            let target = &targets[&table];
            let mut stmt = Statement::new("INSERT INTO ")
                .qualified(&schema, &tracking)
                .push(" AS w (tbl, key) SELECT DISTINCT $1, ARRAY[");
            for (i, k) in target.key.iter().enumerate() {
                stmt = if i > 0 { stmt.push(", ") } else { stmt }
                    .push("(x.k).")
                    .ident(k)
                    .push("::text");
            }
            let stmt = target
                .row(
                    stmt.push("] FROM unnest($2::text[]) AS u(lit) CROSS JOIN LATERAL (SELECT "),
                    "u.lit",
                    "k",
                )
                .push(
                    ") AS x ON CONFLICT (tbl, key) DO UPDATE SET verified = false WHERE w.verified",
                );
            sqlx::query(stmt.into_sql())
                .bind(&table)
                .bind(&keys)
                .execute(&mut *dst_tx)
                .await
                .map_err(derr)?;
        }
        dst_tx.commit().await.map_err(derr)?;
        let pool = src_cluster.database(&src.database);
        if let Some(lsn) = complete.or(applied_to) {
            // Never backwards (a transaction that ended past `upto` moved it further).
            sqlx::query(
                "SELECT pg_replication_slot_advance($1, GREATEST($2::pg_lsn,
                     (SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1)))",
            )
            .bind(self.name.as_str())
            .bind(lsn_text(lsn))
            .execute(&pool)
            .await
            .map_err(serr)?;
        }
        (round.lag_bytes, round.decode_backlog) = self.standing(src_cluster, src).await?;
        round.caught_up = complete.is_some();
        Ok(round)
    }

    /// Makes the source flush its WAL up to `lsn` (at most 30 s).
    async fn wait_flushed(
        &self,
        cluster: &Cluster,
        src: &Container,
        lsn: u64,
    ) -> Result<(), DataPlaneError> {
        let pool = cluster.database(&src.database);
        // WAL after the last commit (a record no commit followed) may wait for the next
        // flush indefinitely on a quiet server: a commit of our own, synchronous, flushes
        // everything before it at once.
        sqlx::raw_sql(
            "BEGIN; SET LOCAL synchronous_commit = on; SELECT pg_current_xact_id(); COMMIT",
        )
        .execute(&pool)
        .await
        .map_err(|e| cluster.err(e))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (flushed,): (i64,) =
                sqlx::query_as("SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint")
                    .fetch_one(&pool)
                    .await
                    .map_err(|e| cluster.err(e))?;
            if flushed as u64 >= lsn {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(DataPlaneError::Invariant(format!(
                    "the source did not flush its WAL to {} within 30 s",
                    lsn_text(lsn)
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Where the slot stands: (WAL it holds back, from what was last applied to the current
    /// position; WAL it would decode again before reaching that, from its `restart_lsn`).
    /// Every read of the slot decodes from `restart_lsn`, so while the copy's own WAL lies in
    /// between, each read of a few changes costs a pass over it. That backlog shrinks when
    /// the server logs its running transactions (at least every 15 s when busy) and the slot
    /// is advanced past that.
    async fn standing(
        &self,
        cluster: &Cluster,
        src: &Container,
    ) -> Result<(i64, i64), DataPlaneError> {
        let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                    pg_wal_lsn_diff(confirmed_flush_lsn, restart_lsn)::bigint
             FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(self.name.as_str())
        .fetch_optional(&cluster.database(&src.database))
        .await
        .map_err(|e| cluster.err(e))?;
        let (lag, backlog) = row.unwrap_or((None, None));
        Ok((lag.unwrap_or(0), backlog.unwrap_or(0)))
    }

    /// Drops the slot and the publication on the source and the table of written keys on the
    /// target, whichever exist. Idempotent.
    pub async fn stop(
        &self,
        (src_cluster, src): (&Cluster, &Container),
        (dst_cluster, dst): (&Cluster, &Container),
    ) -> Result<(), DataPlaneError> {
        if dst_cluster.database_exists(&dst.database).await? {
            let pool = dst_cluster.database(&dst.database);
            let (schema, table) = self.tracking();
            dst_cluster
                .exec(
                    &pool,
                    Statement::new("DROP TABLE IF EXISTS ").qualified(&schema, &table),
                )
                .await?;
            // Another move's table may still be there: then the schema stays.
            match dst_cluster
                .exec(
                    &pool,
                    Statement::new("DROP SCHEMA IF EXISTS ").ident(&schema),
                )
                .await
            {
                Err(DataPlaneError::Sql { source, .. })
                    if crate::sqlstate::classify(&source)
                        == crate::sqlstate::Class::StillReferenced => {}
                other => other?,
            }
        }
        let cluster = src_cluster;
        if !cluster.database_exists(&src.database).await? {
            // The source database is gone, and its publication with it; a slot in it cannot
            // outlive it either (DROP DATABASE refuses while one exists).
            return Ok(());
        }
        let pool = cluster.database(&src.database);
        sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = $1",
        )
        .bind(self.name.as_str())
        .execute(&pool)
        .await
        .map_err(|e| cluster.err(e))?;
        cluster
            .exec(
                &pool,
                Statement::new("DROP PUBLICATION IF EXISTS ").ident(&self.name),
            )
            .await
    }
}

/// Why captured changes cannot carry a move from `src` on `src_cluster` to `dst_cluster`
/// (`None`: they can): the source must decode (`wal_level = logical`, a free replication
/// slot, an admin with REPLICATION) and the target's admin must be able to set
/// `session_replication_role` (a superuser, or `GRANT SET ON PARAMETER`).
pub async fn unavailable(
    src_cluster: &Cluster,
    src: &Container,
    dst_cluster: &Cluster,
) -> Result<Option<String>, DataPlaneError> {
    let pool = src_cluster.database(&src.database);
    let (wal_level, free, replication): (String, i64, bool) = sqlx::query_as(
        "SELECT current_setting('wal_level'),
                current_setting('max_replication_slots')::bigint
                    - (SELECT count(*) FROM pg_replication_slots),
                (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user)",
    )
    .fetch_one(&pool)
    .await
    .map_err(|e| src_cluster.err(e))?;
    let name = &src_cluster.name;
    if wal_level != "logical" {
        return Ok(Some(format!(
            "cluster {name} has wal_level = {wal_level}; logical is needed to copy while the tenant writes"
        )));
    }
    if free <= 0 {
        return Ok(Some(format!(
            "cluster {name} has no free replication slot (max_replication_slots)"
        )));
    }
    if !replication {
        return Ok(Some(format!(
            "the admin role of cluster {name} has neither SUPERUSER nor REPLICATION"
        )));
    }
    // A published table without a replica identity refuses UPDATE and DELETE, for every
    // tenant of the pool: such a table keeps the move fenced rather than break writes.
    let tables: Vec<String> = super::tables::tenant_tables(src_cluster, &pool, &src.schema)
        .await?
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();
    let unkeyed: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = ANY ($2)
           AND (c.relreplident = 'n'
                OR (c.relreplident = 'd' AND NOT EXISTS
                    (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
         ORDER BY 1",
    )
    .bind(src.schema.as_str())
    .bind(&tables)
    .fetch_all(&pool)
    .await
    .map_err(|e| src_cluster.err(e))?;
    if !unkeyed.is_empty() {
        return Ok(Some(format!(
            "table(s) {} have no primary key (changes to them cannot be captured by key)",
            unkeyed.join(", ")
        )));
    }
    Ok((!dst_cluster.may_skip_triggers().await).then(|| {
        format!(
            "the admin role of cluster {} may not set session_replication_role",
            dst_cluster.name
        )
    }))
}

/// Slots (cluster-wide) and publications (in the databases that hold tenant data) of moves
/// still present on `cluster`.
pub async fn leftovers(cluster: &Cluster) -> Result<Vec<String>, DataPlaneError> {
    let pattern = format!("{PREFIX}%");
    let mut found: Vec<String> = sqlx::query_scalar(
        "SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE slot_name LIKE $1",
    )
    .bind(&pattern)
    .fetch_all(cluster.admin())
    .await
    .map_err(|e| cluster.err(e))?;
    for database in super::erasure::databases(cluster).await? {
        let Some(mut conn) = cluster.connect_once(&database).await? else {
            continue;
        };
        let pubs: Vec<String> = sqlx::query_scalar(
            "SELECT 'publication ' || pubname FROM pg_publication WHERE pubname LIKE $1",
        )
        .bind(&pattern)
        .fetch_all(&mut conn)
        .await
        .map_err(|e| cluster.err(e))?;
        found.extend(pubs);
    }
    Ok(found)
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// The primary key columns of `table` in `c`, in key order.
pub async fn key_columns(
    cluster: &Cluster,
    c: &Container,
    table: &Ident,
) -> Result<Vec<Ident>, DataPlaneError> {
    let mut conn = cluster
        .database(&c.database)
        .acquire()
        .await
        .map_err(|e| cluster.err(e))?;
    Ok(Target::read(cluster, &mut conn, c, table.as_str())
        .await?
        .key)
}

// ---- applying ---------------------------------------------------------------------------

/// A target table as the literal of its row type needs it.
struct Target {
    schema: Ident,
    table: Ident,
    /// Every column of the row type, in order: name, and whether it is generated (never
    /// written).
    columns: Vec<(Ident, bool)>,
    key: Vec<Ident>,
}

impl Target {
    async fn read(
        cluster: &Cluster,
        conn: &mut sqlx::PgConnection,
        dst: &Container,
        table: &str,
    ) -> Result<Target, DataPlaneError> {
        let err = |e| cluster.err(e);
        let columns: Vec<(String, bool)> = sqlx::query_as(
            "SELECT a.attname::text, a.attgenerated <> '' FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
        )
        .bind(dst.schema.as_str())
        .bind(table)
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
        let key: Vec<(String,)> = sqlx::query_as(
            "SELECT a.attname::text FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
             WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary
             ORDER BY array_position(i.indkey, a.attnum)",
        )
        .bind(dst.schema.as_str())
        .bind(table)
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
        if columns.is_empty() || key.is_empty() {
            return Err(DataPlaneError::Invariant(format!(
                "target table {}.{table} is missing or has no primary key",
                dst.schema.as_str()
            )));
        }
        Ok(Target {
            schema: dst.schema.clone(),
            table: Ident::new(table)?,
            columns: columns
                .into_iter()
                .map(|(n, g)| Ok((Ident::new(n)?, g)))
                .collect::<Result<_, DataPlaneError>>()?,
            key: key
                .into_iter()
                .map(|(n,)| Ident::new(n))
                .collect::<Result<_, _>>()?,
        })
    }

    /// `(SELECT $n::text::"schema"."table" AS alias)`.
    fn row(&self, stmt: Statement, param: &'static str, alias: &'static str) -> Statement {
        stmt.push(param)
            .push("::text::")
            .qualified(&self.schema, &self.table)
            .push(" AS ")
            .push(alias)
    }

    fn written(&self) -> impl Iterator<Item = &Ident> {
        self.columns.iter().filter(|(_, g)| !g).map(|(c, _)| c)
    }

    /// `(SELECT $1::text::"schema"."table" AS alias OFFSET 0) AS x`, or with `many` one row
    /// per element of the text array `$1`. `OFFSET 0` keeps the planner from inlining the
    /// literal into every `(x.alias).column`, which would parse it once per column.
    fn rows_from(&self, s: Statement, alias: &'static str, many: bool) -> Statement {
        let s = s.push("(SELECT ");
        if many {
            self.row(s, "u.lit", alias)
                .push(" FROM unnest($1::text[]) AS u(lit) OFFSET 0) AS x")
        } else {
            self.row(s, "$1", alias).push(" OFFSET 0) AS x")
        }
    }

    /// Inserts the row literal `$1` (with `many`, each of the array `$1`), or updates the
    /// row with its key.
    fn upsert(&self, many: bool) -> Statement {
        let mut s = Statement::new("INSERT INTO ")
            .qualified(&self.schema, &self.table)
            .push(" (");
        for (i, c) in self.written().enumerate() {
            s = if i > 0 { s.push(", ") } else { s }.ident(c);
        }
        s = s.push(") OVERRIDING SYSTEM VALUE SELECT ");
        for (i, c) in self.written().enumerate() {
            s = if i > 0 { s.push(", ") } else { s }.push("(x.r).").ident(c);
        }
        s = self
            .rows_from(s.push(" FROM "), "r", many)
            .push(" ON CONFLICT (");
        for (i, c) in self.key.iter().enumerate() {
            s = if i > 0 { s.push(", ") } else { s }.ident(c);
        }
        let rest: Vec<&Ident> = self.written().filter(|c| !self.key.contains(c)).collect();
        if rest.is_empty() {
            return s.push(") DO NOTHING");
        }
        s = s.push(") DO UPDATE SET ");
        for (i, c) in rest.iter().enumerate() {
            s = if i > 0 { s.push(", ") } else { s }
                .ident(c)
                .push(" = EXCLUDED.")
                .ident(c);
        }
        s
    }

    /// `… WHERE t.k1 = (x.k).k1 AND …` over a key literal bound as `$n` (alias `k`).
    fn by_key(&self, mut s: Statement) -> Statement {
        for (i, c) in self.key.iter().enumerate() {
            s = s
                .push(if i > 0 { " AND " } else { " WHERE " })
                .push("t.")
                .ident(c)
                .push(" = (x.k).")
                .ident(c);
        }
        s
    }

    /// Deletes the row with the key literal `$1` (with `many`, each of the array `$1`).
    fn delete(&self, many: bool) -> Statement {
        let s = Statement::new("DELETE FROM ")
            .qualified(&self.schema, &self.table)
            .push(" AS t USING ");
        self.by_key(self.rows_from(s, "k", many))
    }

    /// Sets only `columns` (an update that left TOASTed values out as unchanged).
    fn update(&self, columns: &[&Ident]) -> Statement {
        let mut s = Statement::new("UPDATE ")
            .qualified(&self.schema, &self.table)
            .push(" AS t SET ");
        for (i, c) in columns.iter().enumerate() {
            s = if i > 0 { s.push(", ") } else { s }
                .ident(c)
                .push(" = (x.r).")
                .ident(c);
        }
        s = self.row(s.push(" FROM (SELECT "), "$1", "r").push(", ");
        self.by_key(self.row(s, "$2", "k").push(" OFFSET 0) AS x"))
    }

    /// The literal of this table's row type holding `tuple`'s values (by column name), NULL
    /// for generated columns and those `tuple` does not have. `None` if a value is unchanged.
    fn literal(&self, rel: &Relation, tuple: &[Value]) -> Option<String> {
        let unchanged = self.columns.iter().any(|(col, generated)| {
            !generated
                && matches!(
                    rel.position(col.as_str()).and_then(|p| tuple.get(p)),
                    Some(Value::Unchanged)
                )
        });
        (!unchanged).then(|| self.fields(rel, tuple))
    }

    /// `tuple`'s values in this table's row type, unchanged ones left NULL (an update with
    /// unchanged values sets only the others).
    fn fields(&self, rel: &Relation, tuple: &[Value]) -> String {
        let mut out = String::from("(");
        for (i, (col, generated)) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if *generated {
                continue;
            }
            if let Some(Value::Text(v)) = rel.position(col.as_str()).and_then(|p| tuple.get(p)) {
                quote_field(&mut out, v);
            }
        }
        out.push(')');
        out
    }

    /// The key literal of `tuple` (other columns NULL).
    fn key_literal(&self, rel: &Relation, tuple: &[Value]) -> Result<String, DataPlaneError> {
        let mut out = String::from("(");
        for (i, (col, _)) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if !self.key.contains(col) {
                continue;
            }
            match rel.position(col.as_str()).and_then(|p| tuple.get(p)) {
                Some(Value::Text(v)) => quote_field(&mut out, v),
                _ => {
                    return Err(DataPlaneError::Invariant(format!(
                        "a change to {} without its key column {}",
                        self.table.as_str(),
                        col.as_str()
                    )));
                }
            }
        }
        out.push(')');
        Ok(out)
    }

    /// The key literals of the rows `change` writes (an update that moves a row: both).
    fn keys_of(&self, rel: &Relation, change: &Change) -> Result<Vec<String>, DataPlaneError> {
        Ok(match change {
            Change::Insert { new, .. } => vec![self.key_literal(rel, new)?],
            Change::Update { old, new, .. } => {
                let mut keys = vec![self.key_literal(rel, new)?];
                if let Some(old) = old {
                    keys.push(self.key_literal(rel, old)?);
                }
                keys
            }
            Change::Delete { old, .. } => vec![self.key_literal(rel, old)?],
        })
    }

    /// How `change` applies here: as rows put or removed by key, or (an update that left
    /// TOASTed values out as unchanged) as a statement setting only what it carries.
    fn apply(&self, rel: &Relation, change: &Change) -> Result<Apply, DataPlaneError> {
        Ok(match change {
            Change::Insert { new, .. } => match self.literal(rel, new) {
                Some(row) => Apply::Writes(vec![Write::Put {
                    key: self.key_literal(rel, new)?,
                    row,
                }]),
                None => {
                    return Err(DataPlaneError::Invariant(
                        "an insert with an unchanged value".into(),
                    ));
                }
            },
            Change::Update { old, new, .. } => {
                let key = self.key_literal(rel, old.as_deref().unwrap_or(new))?;
                let new_key = self.key_literal(rel, new)?;
                match self.literal(rel, new) {
                    Some(row) if key == new_key => Apply::Writes(vec![Write::Put { key, row }]),
                    Some(row) => Apply::Writes(vec![
                        Write::Remove { key },
                        Write::Put { key: new_key, row },
                    ]),
                    None => {
                        // Unchanged TOASTed values: set only what the change carries.
                        let changed: Vec<&Ident> = self
                            .written()
                            .filter(|c| {
                                matches!(
                                    rel.position(c.as_str()).and_then(|p| new.get(p)),
                                    Some(Value::Text(_) | Value::Null)
                                )
                            })
                            .collect();
                        let row = self.fields(rel, new);
                        Apply::Partial(self.update(&changed), vec![row, key])
                    }
                }
            }
            Change::Delete { old, .. } => Apply::Writes(vec![Write::Remove {
                key: self.key_literal(rel, old)?,
            }]),
        })
    }
}

/// How one captured change applies to its target table.
enum Apply {
    Writes(Vec<Write>),
    Partial(Statement, Vec<String>),
}

/// A row put (upserted) or removed, by the literal of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Write {
    Put { key: String, row: String },
    Remove { key: String },
}

impl Write {
    fn key(&self) -> &str {
        match self {
            Write::Put { key, .. } | Write::Remove { key } => key,
        }
    }
}

/// What `pending` (table, write; in commit order) leaves behind, per table in the order the
/// tables first appear: for each key only its last write, the keys removed, then the rows
/// put. Applying that in any order gives what applying `pending` one by one gives, with
/// foreign keys and triggers off (`session_replication_role = replica`), except where two
/// rows meet on a unique constraint other than the key: [`flush`] then applies one by one.
fn net(pending: &[(String, Write)]) -> Vec<(&str, Vec<&str>, Vec<&str>)> {
    let mut tables: Vec<(&str, Vec<&Write>, HashMap<&str, usize>)> = Vec::new();
    for (table, w) in pending {
        let t = match tables.iter().position(|(name, ..)| name == table) {
            Some(t) => t,
            None => {
                tables.push((table, Vec::new(), HashMap::new()));
                tables.len() - 1
            }
        };
        let (_, last, at) = &mut tables[t];
        match at.get(w.key()) {
            Some(&i) => last[i] = w,
            None => {
                at.insert(w.key(), last.len());
                last.push(w);
            }
        }
    }
    tables
        .into_iter()
        .map(|(table, last, _)| {
            let mut removed = Vec::new();
            let mut put = Vec::new();
            for w in last {
                match w {
                    Write::Remove { key } => removed.push(key.as_str()),
                    Write::Put { row, .. } => put.push(row.as_str()),
                }
            }
            (table, removed, put)
        })
        .collect()
}

/// Applies `pending` in `tx` and empties it: one statement per table for the keys removed
/// and one for the rows put ([`net`]), which costs a round trip per table rather than per
/// change; if those meet a conflict that order may cause, they are rolled back (to a
/// savepoint) and the writes applied one by one in commit order.
async fn flush(
    tx: &mut sqlx::PgConnection,
    cluster: &Cluster,
    targets: &HashMap<String, Target>,
    pending: &mut Vec<(String, Write)>,
) -> Result<(), DataPlaneError> {
    if pending.is_empty() {
        return Ok(());
    }
    let err = |e| cluster.err(e);
    sqlx::raw_sql("SAVEPOINT tenantd_apply")
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    let mut batched = Ok(());
    for (table, removed, put) in net(pending) {
        let target = &targets[table];
        for (stmt, literals) in [(target.delete(true), removed), (target.upsert(true), put)] {
            if literals.is_empty() {
                continue;
            }
            batched = sqlx::query(stmt.into_sql())
                .bind(literals)
                .execute(&mut *tx)
                .await
                .map(|_| ());
            if batched.is_err() {
                break;
            }
        }
        if batched.is_err() {
            break;
        }
    }
    match batched {
        Ok(()) => {}
        Err(e) if crate::sqlstate::is_set_conflict(&e) => {
            tracing::debug!(error = %e, "applying the captured writes one by one");
            sqlx::raw_sql("ROLLBACK TO SAVEPOINT tenantd_apply")
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            for (table, w) in pending.iter() {
                let target = &targets[table];
                let (stmt, literal) = match w {
                    Write::Put { row, .. } => (target.upsert(false), row),
                    Write::Remove { key } => (target.delete(false), key),
                };
                sqlx::query(stmt.into_sql())
                    .bind(literal)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
            }
        }
        Err(e) => return Err(err(e)),
    }
    sqlx::raw_sql("RELEASE SAVEPOINT tenantd_apply")
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    pending.clear();
    Ok(())
}

/// A field of a composite literal: double-quoted, `"` and `\` escaped (an empty field is
/// NULL, a quoted empty string is '').
fn quote_field(out: &mut String, v: &str) {
    out.push('"');
    for ch in v.chars() {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
}

// ---- pgoutput, protocol version 1 ----------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the update did not change (not sent).
    Unchanged,
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub key: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub columns: Vec<Column>,
}

impl Relation {
    fn position(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == column)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    Update {
        relation: u32,
        /// The old key (or row), sent when the key changed (or with REPLICA IDENTITY FULL).
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    Delete {
        relation: u32,
        old: Vec<Value>,
    },
}

impl Change {
    fn relation(&self) -> u32 {
        match self {
            Change::Insert { relation, .. }
            | Change::Update { relation, .. }
            | Change::Delete { relation, .. } => *relation,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Relation(Relation),
    Change(Change),
    Commit {
        end_lsn: u64,
    },
    Truncate,
    /// Begin, origin, type and logical messages: nothing to apply.
    Other,
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bad(what: &str) -> DataPlaneError {
        DataPlaneError::Invariant(format!("malformed pgoutput message: {what}"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DataPlaneError> {
        if self.data.len() < n {
            return Err(Self::bad("truncated"));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DataPlaneError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DataPlaneError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, DataPlaneError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, DataPlaneError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self) -> Result<String, DataPlaneError> {
        let end = self
            .data
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| Self::bad("unterminated string"))?;
        let s = std::str::from_utf8(&self.data[..end])
            .map_err(|_| Self::bad("a name that is not UTF-8"))?
            .to_owned();
        self.data = &self.data[end + 1..];
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Value>, DataPlaneError> {
        let n = self.u16()?;
        (0..n)
            .map(|_| match self.u8()? {
                b'n' => Ok(Value::Null),
                b'u' => Ok(Value::Unchanged),
                b't' => {
                    let len = self.u32()? as usize;
                    let bytes = self.take(len)?;
                    String::from_utf8(bytes.to_vec())
                        .map(Value::Text)
                        .map_err(|_| Self::bad("a value that is not UTF-8"))
                }
                other => Err(Self::bad(&format!("tuple value kind {:?}", other as char))),
            })
            .collect()
    }
}

/// Parses one message of `pgoutput` protocol version 1 (text values).
pub fn parse(data: &[u8]) -> Result<Message, DataPlaneError> {
    let mut r = Reader { data };
    Ok(match r.u8()? {
        b'R' => {
            let id = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let _identity = r.u8()?;
            let n = r.u16()?;
            let columns = (0..n)
                .map(|_| {
                    let flags = r.u8()?;
                    let name = r.string()?;
                    let _type_oid = r.u32()?;
                    let _typmod = r.u32()?;
                    Ok(Column {
                        name,
                        key: flags & 1 == 1,
                    })
                })
                .collect::<Result<_, DataPlaneError>>()?;
            Message::Relation(Relation {
                id,
                namespace,
                name,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32()?;
            if r.u8()? != b'N' {
                return Err(Reader::bad("insert without a new tuple"));
            }
            Message::Change(Change::Insert {
                relation,
                new: r.tuple()?,
            })
        }
        b'U' => {
            let relation = r.u32()?;
            let (old, new) = match r.u8()? {
                b'K' | b'O' => {
                    let old = r.tuple()?;
                    if r.u8()? != b'N' {
                        return Err(Reader::bad("update without a new tuple"));
                    }
                    (Some(old), r.tuple()?)
                }
                b'N' => (None, r.tuple()?),
                _ => return Err(Reader::bad("update tuple kind")),
            };
            Message::Change(Change::Update { relation, old, new })
        }
        b'D' => {
            let relation = r.u32()?;
            if !matches!(r.u8()?, b'K' | b'O') {
                return Err(Reader::bad("delete without its key"));
            }
            Message::Change(Change::Delete {
                relation,
                old: r.tuple()?,
            })
        }
        b'C' => {
            let _flags = r.u8()?;
            let _commit_lsn = r.u64()?;
            let end_lsn = r.u64()?;
            Message::Commit { end_lsn }
        }
        b'T' => Message::Truncate,
        b'B' | b'O' | b'Y' | b'M' => Message::Other,
        other => return Err(Reader::bad(&format!("message kind {:?}", other as char))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut out = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => out.push(b'n'),
                Some(v) => {
                    out.push(b't');
                    out.extend((v.len() as u32).to_be_bytes());
                    out.extend(v.as_bytes());
                }
            }
        }
        out
    }

    #[test]
    fn the_last_write_to_a_key_decides_per_table() {
        let put = |t: &str, k: &str, r: &str| {
            (
                t.to_owned(),
                Write::Put {
                    key: k.into(),
                    row: r.into(),
                },
            )
        };
        let remove = |t: &str, k: &str| (t.to_owned(), Write::Remove { key: k.into() });
        let pending = vec![
            put("patients", "(1)", "(1,a)"),
            put("visits", "(9)", "(9,x)"),
            put("patients", "(1)", "(1,b)"),
            put("patients", "(2)", "(2,c)"),
            remove("patients", "(2)"),
            // A key changed: the old one removed, the new one put.
            remove("visits", "(9)"),
            put("visits", "(10)", "(10,x)"),
            remove("patients", "(3)"),
            put("patients", "(3)", "(3,d)"),
        ];
        assert_eq!(
            net(&pending),
            vec![
                ("patients", vec!["(2)"], vec!["(1,b)", "(3,d)"]),
                ("visits", vec!["(9)"], vec!["(10,x)"]),
            ]
        );
        assert!(net(&[]).is_empty());
    }

    #[test]
    fn parses_relations_and_changes() {
        let mut rel = vec![b'R'];
        rel.extend(7u32.to_be_bytes());
        rel.extend(b"pool\0patients\0");
        rel.push(b'd');
        rel.extend(2u16.to_be_bytes());
        for (flags, name) in [(1u8, "tenant_id"), (0, "given_name")] {
            rel.push(flags);
            rel.extend(name.as_bytes());
            rel.push(0);
            rel.extend(25u32.to_be_bytes());
            rel.extend(u32::MAX.to_be_bytes());
        }
        let Message::Relation(r) = parse(&rel).unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.id, r.namespace.as_str(), r.name.as_str()),
            (7, "pool", "patients")
        );
        assert!(r.columns[0].key && !r.columns[1].key);

        let mut ins = vec![b'I'];
        ins.extend(7u32.to_be_bytes());
        ins.push(b'N');
        ins.extend(tuple(&[Some("t1"), None]));
        assert_eq!(
            parse(&ins).unwrap(),
            Message::Change(Change::Insert {
                relation: 7,
                new: vec![Value::Text("t1".into()), Value::Null]
            })
        );

        let mut upd = vec![b'U'];
        upd.extend(7u32.to_be_bytes());
        upd.push(b'K');
        upd.extend(tuple(&[Some("old"), None]));
        upd.push(b'N');
        upd.extend(tuple(&[Some("new"), Some("x")]));
        let Message::Change(Change::Update { old, new, .. }) = parse(&upd).unwrap() else {
            panic!()
        };
        assert_eq!(old.unwrap()[0], Value::Text("old".into()));
        assert_eq!(new[1], Value::Text("x".into()));

        let mut commit = vec![b'C', 0];
        commit.extend(1u64.to_be_bytes());
        commit.extend(0x1_0000_0002u64.to_be_bytes());
        commit.extend(0u64.to_be_bytes());
        assert_eq!(
            parse(&commit).unwrap(),
            Message::Commit {
                end_lsn: 0x1_0000_0002
            }
        );
        assert_eq!(lsn_text(0x1_0000_0002), "1/2");
        // Truncated input is an error, never a panic.
        assert!(parse(&ins[..ins.len() - 1]).is_err());
        assert!(parse(b"").is_err());
    }

    #[test]
    fn composite_fields_escape_quotes_and_backslashes() {
        let mut out = String::new();
        quote_field(&mut out, r#"he said "hi" \o/"#);
        assert_eq!(out, r#""he said \"hi\" \\o/""#);
    }
}
