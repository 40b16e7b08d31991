//! Loading a `tenantd-sql/1` dump ([`super::dump`], docs/export.md) back into a container,
//! and proving what was loaded.
//!
//! A restore never executes SQL text from an archive. [`DumpReader`] takes from the dump only
//! its `COPY public.<table> (<columns>) FROM stdin;` blocks: the table must be a tenant table,
//! every column a valid identifier, and every row's `tenant_id` the exported tenant's (it is
//! rewritten to the restored tenant's id as the row passes). The tables themselves are created
//! by tenantd's own migrations ([`super::catalog`]); everything else in the dump (SETs, DDL,
//! comments) is ignored.
//!
//! [`RowDigest`] is an order-independent digest of a table's rows in COPY text form: the sum of
//! the first 128 bits of each row line's SHA-256. The reader computes it over the rows it
//! hands on; [`read_back`] computes it over `COPY … TO STDOUT` of the loaded table with the
//! dump's output settings pinned. Equal digests mean PostgreSQL holds exactly the rows of the
//! dump, whatever their order.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use uuid::Uuid;

use super::copy::{column_list, pinned_transaction};
use super::{Cluster, Container, DataPlaneError};
use crate::sql::{Ident, Statement};

/// The dump's format line ([`super::dump`] writes it, [`DumpReader`] requires it).
pub const FORMAT_LINE: &str =
    "-- format tenantd-sql/1: restore into an empty database with psql -f";
/// The dump's last comment: a dump without it was cut short.
pub const COMPLETE_LINE: &str = "-- tenantd export complete";

/// Rows are handed on in pieces of about this size.
const PIECE: usize = 256 * 1024;

/// Count and order-independent checksum of a set of row lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowDigest {
    pub rows: u64,
    sum_a: u64,
    sum_b: u64,
}

impl RowDigest {
    /// Adds one row line (without its newline).
    pub fn add(&mut self, line: &[u8]) {
        let h = Sha256::digest(line);
        let a = u64::from_le_bytes(h[0..8].try_into().expect("8 bytes"));
        let b = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        self.rows += 1;
        self.sum_a = self.sum_a.wrapping_add(a);
        self.sum_b = self.sum_b.wrapping_add(b);
    }

    pub fn checksum(&self) -> String {
        format!("{:016x}{:016x}", self.sum_a, self.sum_b)
    }
}

/// One table of a dump as the reader saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableLoad {
    pub table: String,
    pub columns: Vec<String>,
    pub rows: u64,
    /// [`RowDigest::checksum`] of the rows as handed on (tenant id rewritten); empty from a
    /// reader [`DumpReader::without_digests`].
    pub checksum: String,
}

/// What the reader hands on, in dump order.
#[derive(Debug)]
pub enum Piece {
    /// A table's COPY block starts.
    Begin { table: Ident, columns: Vec<Ident> },
    /// Complete row lines (COPY text format, newline-terminated) and how many.
    Rows { data: Vec<u8>, rows: u64 },
    /// The table's COPY block ended.
    End,
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("the dump is not in format tenantd-sql/1")]
    Format,
    #[error("line {line}: {what}")]
    Malformed { line: u64, what: String },
    #[error("table {table}, line {line}: a row of another tenant; nothing of it was loaded")]
    ForeignRow { table: String, line: u64 },
    #[error("the dump ends early (its last line is missing)")]
    Truncated,
}

struct Copying {
    table: TableLoad,
    tenant_column: usize,
    digest: RowDigest,
}

/// Reads a dump's plaintext incrementally (pieces may split lines anywhere) and yields its
/// COPY blocks as [`Piece`]s.
pub struct DumpReader {
    /// The tables the dump may hold (its signed manifest's).
    tables: Vec<String>,
    digests: bool,
    source: [u8; 36],
    target: [u8; 36],
    carry: Vec<u8>,
    line: u64,
    format_seen: bool,
    complete: bool,
    copying: Option<Copying>,
    rows: Vec<u8>,
    rows_in_piece: u64,
    done: Vec<TableLoad>,
}

fn uuid_text(id: Uuid) -> [u8; 36] {
    let mut out = [0u8; 36];
    id.hyphenated().encode_lower(&mut out);
    out
}

impl DumpReader {
    /// Rows must belong to `source`; they are handed on as `target`'s, and digested. A COPY
    /// block of a table not in `tables` (the export's manifest lists them) is refused.
    pub fn new(source: Uuid, target: Uuid, tables: Vec<String>) -> Self {
        DumpReader {
            tables,
            digests: true,
            source: uuid_text(source),
            target: uuid_text(target),
            carry: Vec::new(),
            line: 0,
            format_seen: false,
            complete: false,
            copying: None,
            rows: Vec::with_capacity(PIECE + 64 * 1024),
            rows_in_piece: 0,
            done: Vec::new(),
        }
    }

    /// Counts rows without digesting them ([`TableLoad::checksum`] stays empty): for a pass
    /// that only checks the dump.
    pub fn without_digests(mut self) -> Self {
        self.digests = false;
        self
    }

    /// Reads the next plaintext bytes; returns what became complete.
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<Piece>, DumpError> {
        let mut out = Vec::new();
        let mut rest = data;
        if !self.carry.is_empty() {
            match memchr::memchr(b'\n', rest) {
                None => {
                    self.carry.extend_from_slice(rest);
                    return Ok(out);
                }
                Some(nl) => {
                    let mut line = std::mem::take(&mut self.carry);
                    line.extend_from_slice(&rest[..nl]);
                    self.line(&line, &mut out)?;
                    rest = &rest[nl + 1..];
                }
            }
        }
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', rest) {
            self.line(&rest[start..nl], &mut out)?;
            start = nl + 1;
        }
        self.carry.extend_from_slice(&rest[start..]);
        self.flush_rows(&mut out);
        Ok(out)
    }

    /// Ends the dump: it must be complete. Returns every table read.
    pub fn finish(mut self) -> Result<Vec<TableLoad>, DumpError> {
        if !self.carry.is_empty() || self.copying.is_some() || !self.complete {
            return Err(DumpError::Truncated);
        }
        Ok(std::mem::take(&mut self.done))
    }

    fn malformed(&self, what: impl Into<String>) -> DumpError {
        DumpError::Malformed {
            line: self.line,
            what: what.into(),
        }
    }

    fn flush_rows(&mut self, out: &mut Vec<Piece>) {
        if self.rows.is_empty() {
            return;
        }
        let data = std::mem::replace(&mut self.rows, Vec::with_capacity(PIECE + 64 * 1024));
        out.push(Piece::Rows {
            data,
            rows: std::mem::take(&mut self.rows_in_piece),
        });
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<Piece>) -> Result<(), DumpError> {
        self.line += 1;
        if self.copying.is_some() {
            if line == b"\\." {
                self.flush_rows(out);
                let c = self.copying.take().expect("copying");
                let mut table = c.table;
                table.rows = c.digest.rows;
                if self.digests {
                    table.checksum = c.digest.checksum();
                }
                self.done.push(table);
                out.push(Piece::End);
                return Ok(());
            }
            return self.row(line, out);
        }
        if self.complete {
            if line.is_empty() || line.starts_with(b"--") {
                return Ok(());
            }
            return Err(self.malformed("statements after the end of the dump"));
        }
        if line == FORMAT_LINE.as_bytes() {
            self.format_seen = true;
        } else if line == COMPLETE_LINE.as_bytes() {
            self.complete = true;
        } else if line.starts_with(b"COPY ") {
            if !self.format_seen {
                return Err(DumpError::Format);
            }
            let (table, columns) = self.copy_header(line)?;
            let tenant_column = columns
                .iter()
                .position(|c| c.as_str() == "tenant_id")
                .ok_or_else(|| self.malformed(format!("table {table} has no tenant_id column")))?;
            self.copying = Some(Copying {
                table: TableLoad {
                    table: table.as_str().to_owned(),
                    columns: columns.iter().map(|c| c.as_str().to_owned()).collect(),
                    rows: 0,
                    checksum: String::new(),
                },
                tenant_column,
                digest: RowDigest::default(),
            });
            out.push(Piece::Begin { table, columns });
        }
        Ok(())
    }

    /// `COPY public."t" ("a", "b") FROM stdin;`
    fn copy_header(&self, line: &[u8]) -> Result<(Ident, Vec<Ident>), DumpError> {
        let bad = || self.malformed("unexpected COPY statement");
        let text = std::str::from_utf8(line).map_err(|_| bad())?;
        let body = text
            .strip_prefix("COPY public.")
            .and_then(|s| s.strip_suffix(") FROM stdin;"))
            .ok_or_else(bad)?;
        let (table, columns) = body.split_once(" (").ok_or_else(bad)?;
        let ident = |quoted: &str| {
            quoted
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .and_then(|s| Ident::new(s).ok())
                .ok_or_else(|| self.malformed(format!("bad identifier {quoted:?}")))
        };
        let table = ident(table)?;
        if !self.tables.iter().any(|t| t == table.as_str()) {
            return Err(self.malformed(format!("{table} is not a table of the export")));
        }
        if self.done.iter().any(|t| t.table == table.as_str()) {
            return Err(self.malformed(format!("table {table} appears twice")));
        }
        let columns = columns
            .split(", ")
            .map(ident)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((table, columns))
    }

    fn row(&mut self, line: &[u8], out: &mut Vec<Piece>) -> Result<(), DumpError> {
        let c = self.copying.as_mut().expect("copying");
        // Text COPY escapes tabs inside values: every raw tab separates fields.
        let start = if c.tenant_column == 0 {
            0
        } else {
            match memchr::memchr_iter(b'\t', line).nth(c.tenant_column - 1) {
                Some(tab) => tab + 1,
                None => return Err(self.malformed("row has too few fields")),
            }
        };
        let field = line.get(start..start + 36);
        let ends = line.get(start + 36).is_none_or(|&b| b == b'\t');
        if field != Some(&self.source[..]) || !ends {
            return Err(DumpError::ForeignRow {
                table: c.table.table.clone(),
                line: self.line,
            });
        }
        let at = self.rows.len();
        self.rows.extend_from_slice(line);
        self.rows[at + start..at + start + 36].copy_from_slice(&self.target);
        if self.digests {
            c.digest.add(&self.rows[at..]);
        } else {
            c.digest.rows += 1;
        }
        self.rows.push(b'\n');
        self.rows_in_piece += 1;
        if self.rows.len() >= PIECE {
            self.flush_rows(out);
        }
        Ok(())
    }
}

/// Empties the tenant tables of the container loaded into (a retried load starts over): a
/// staging container's are truncated; in shared tables (a new pool tenant loaded in place)
/// only the tenant's own rows are deleted, children first.
pub async fn truncate(cluster: &Cluster, c: &Container) -> Result<(), DataPlaneError> {
    let db = cluster.database(&c.database);
    let tables = super::tables::tenant_tables(cluster, &db, &c.schema).await?;
    if c.shares_tables() {
        for table in tables.iter().rev() {
            super::erasure::delete_rows(
                cluster,
                &c.database,
                &c.schema,
                table,
                c.tenant_id,
                super::erasure::BACKGROUND,
            )
            .await?;
        }
        return Ok(());
    }
    if tables.is_empty() {
        return Ok(());
    }
    let mut stmt = Statement::new("TRUNCATE ");
    for (i, table) in tables.iter().enumerate() {
        if i > 0 {
            stmt = stmt.push(", ");
        }
        stmt = stmt.qualified(&c.schema, table);
    }
    cluster.exec(&db, stmt).await
}

/// Connections that load at once: the server parses and stores COPY input on one core per
/// connection, so the pieces of every table are spread over two (the tables must have no
/// keys or indexes yet, see [`super::staging`]).
const LANES: usize = 2;

/// How a lane ended.
#[derive(PartialEq, Eq)]
enum LaneEnd {
    Done,
    /// Its input stopped inside a COPY block (the producer failed; its error says why).
    Cut,
}

/// Writes pieces into `c`'s tables by `COPY … FROM STDIN` (text format, the dump's own), as
/// they arrive, on [`LANES`] connections: each table's COPY is opened on every lane and each
/// piece of rows goes to whichever lane has room first. `on_rows` is told every table's rows
/// handed on so far. Returning (also on error) drops the queue, which tells the producer to
/// stop.
pub async fn load(
    cluster: &Cluster,
    c: &Container,
    mut pieces: mpsc::Receiver<Piece>,
    mut on_rows: impl FnMut(&str, u64),
) -> Result<(), DataPlaneError> {
    let (tx_a, rx_a) = mpsc::channel::<Piece>(LANES);
    let (tx_b, rx_b) = mpsc::channel::<Piece>(LANES);
    // Ok(false): a lane went away (its own result says why).
    let dispatch = async move {
        let lanes = [tx_a, tx_b];
        let (mut table, mut rows) = (String::new(), 0u64);
        while let Some(piece) = pieces.recv().await {
            match piece {
                Piece::Begin { table: t, columns } => {
                    for lane in &lanes {
                        let begin = Piece::Begin {
                            table: t.clone(),
                            columns: columns.clone(),
                        };
                        if lane.send(begin).await.is_err() {
                            return false;
                        }
                    }
                    (table, rows) = (t.as_str().to_owned(), 0);
                }
                Piece::Rows { data, rows: n } => {
                    let room = tokio::select! {
                        r = lanes[0].reserve() => r,
                        r = lanes[1].reserve() => r,
                    };
                    let Ok(permit) = room else { return false };
                    permit.send(Piece::Rows { data, rows: n });
                    rows += n;
                    on_rows(&table, rows);
                }
                Piece::End => {
                    for lane in &lanes {
                        if lane.send(Piece::End).await.is_err() {
                            return false;
                        }
                    }
                    tracing::info!(table = %table, rows, "table loaded");
                }
            }
        }
        true
    };
    let (complete, a, b) = tokio::join!(dispatch, lane(cluster, c, rx_a), lane(cluster, c, rx_b));
    let (a, b) = (a?, b?);
    if !complete || a == LaneEnd::Cut || b == LaneEnd::Cut {
        return Err(DataPlaneError::Invariant(
            "the dump stream ended inside a table".into(),
        ));
    }
    Ok(())
}

/// One loading connection: COPY blocks as the dispatcher opens and closes them, in one
/// transaction. Into shared tables (a new pool tenant) it runs as a replica
/// (`session_replication_role`), as a tier change's copy does: the two lanes load a child
/// table's rows while the other may not have committed their parents yet, so the foreign
/// keys are checked afterwards, for the tenant's rows ([`super::references`]); the pool's
/// triggers (its write fence included) do not fire for rows restored as they were exported.
async fn lane(
    cluster: &Cluster,
    c: &Container,
    mut pieces: mpsc::Receiver<Piece>,
) -> Result<LaneEnd, DataPlaneError> {
    let err = |e| cluster.err(e);
    // No settings to pin: the dump's values are unambiguous input (ISO dates, explicit UTC
    // offsets, full-precision floats).
    let mut conn = cluster.database(&c.database).acquire().await.map_err(err)?;
    let mut conn = sqlx::Connection::begin(&mut *conn).await.map_err(err)?;
    if c.shares_tables() {
        sqlx::raw_sql("SET LOCAL session_replication_role = replica")
            .execute(&mut *conn)
            .await
            .map_err(err)?;
    }
    while let Some(piece) = pieces.recv().await {
        let Piece::Begin { table, columns } = piece else {
            return Err(DataPlaneError::Invariant(
                "rows outside a COPY block".into(),
            ));
        };
        let stmt = column_list(
            Statement::new("COPY ")
                .qualified(&c.schema, &table)
                .push(" ("),
            &columns,
        )
        .push(") FROM STDIN");
        let mut sink = conn.copy_in_raw(stmt.as_str()).await.map_err(err)?;
        loop {
            match pieces.recv().await {
                Some(Piece::Rows { data, .. }) => {
                    sink.send(data).await.map_err(err)?;
                }
                Some(Piece::End) => break,
                _ => {
                    let _ = sink
                        .abort("the dump stream ended inside a COPY block")
                        .await;
                    return Ok(LaneEnd::Cut);
                }
            }
        }
        sink.finish().await.map_err(err)?;
    }
    conn.commit().await.map_err(err)?;
    Ok(LaneEnd::Done)
}

/// The digest of `table` in `c` as stored: its rows read back by `COPY … TO STDOUT` (text,
/// with the dump's output settings), `columns` in the dump's order; in shared tables, the
/// tenant's rows.
pub async fn read_back(
    cluster: &Cluster,
    c: &Container,
    table: &Ident,
    columns: &[Ident],
) -> Result<RowDigest, DataPlaneError> {
    let err = |e| cluster.err(e);
    let mut tx = pinned_transaction(cluster, &c.database).await?;
    let mut stmt = column_list(Statement::new("COPY (SELECT "), columns)
        .push(" FROM ")
        .qualified(&c.schema, table);
    if c.shares_tables() {
        stmt = stmt
            .push(" WHERE tenant_id = ")
            .literal(&c.tenant_id.to_string())?;
    }
    let stmt = stmt.push(") TO STDOUT");
    let mut digest = RowDigest::default();
    let mut carry: Vec<u8> = Vec::new();
    let mut stream = tx.copy_out_raw(stmt.as_str()).await.map_err(err)?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(err)?;
        carry.extend_from_slice(&chunk);
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', &carry) {
            digest.add(&carry[start..nl]);
            start = nl + 1;
        }
        carry.drain(..start);
    }
    drop(stream);
    tx.commit().await.map_err(err)?;
    if !carry.is_empty() {
        return Err(DataPlaneError::Invariant(format!(
            "COPY output of {table} ended inside a row"
        )));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "11111111-1111-1111-1111-111111111111";
    const TARGET: &str = "22222222-2222-2222-2222-222222222222";

    fn dump(rows: &[&str]) -> String {
        let mut s = format!(
            "--\n{FORMAT_LINE}\nSET x = 1;\nCREATE TABLE public.\"patients\" (\n    a int\n);\n"
        );
        s.push_str("COPY public.\"patients\" (\"id\", \"tenant_id\", \"note\") FROM stdin;\n");
        for r in rows {
            s.push_str(r);
            s.push('\n');
        }
        s.push_str("\\.\n\nALTER TABLE ONLY public.\"patients\" ADD CONSTRAINT x;\n--\n");
        s.push_str(COMPLETE_LINE);
        s.push_str("\n--\n");
        s
    }

    fn read(text: &str, piece: usize) -> Result<(Vec<TableLoad>, Vec<u8>), DumpError> {
        let mut r = DumpReader::new(
            SOURCE.parse().unwrap(),
            TARGET.parse().unwrap(),
            vec!["patients".into()],
        );
        let mut data = Vec::new();
        for chunk in text.as_bytes().chunks(piece) {
            for p in r.feed(chunk)? {
                if let Piece::Rows { data: d, .. } = p {
                    data.extend(d);
                }
            }
        }
        Ok((r.finish()?, data))
    }

    #[test]
    fn yields_rows_with_the_new_tenant_id_whatever_the_piece_size() {
        let rows = [
            format!("1\t{SOURCE}\thello"),
            format!("2\t{SOURCE}\t\\N"),
            format!("3\t{SOURCE}\ttab\\there"),
        ];
        let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
        let text = dump(&rows);
        let (whole, data) = read(&text, text.len()).unwrap();
        let mut counted = DumpReader::new(
            SOURCE.parse().unwrap(),
            TARGET.parse().unwrap(),
            vec!["patients".into()],
        )
        .without_digests();
        counted.feed(text.as_bytes()).unwrap();
        let counted = counted.finish().unwrap();
        assert_eq!((counted[0].rows, counted[0].checksum.as_str()), (3, ""));
        for piece in [1, 7, 64] {
            assert_eq!(read(&text, piece).unwrap(), (whole.clone(), data.clone()));
        }
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].table, "patients");
        assert_eq!(whole[0].columns, ["id", "tenant_id", "note"]);
        assert_eq!(whole[0].rows, 3);
        let expected = rows.join("\n").replace(SOURCE, TARGET) + "\n";
        assert_eq!(String::from_utf8(data).unwrap(), expected);
        let mut d = RowDigest::default();
        for line in expected.lines().rev() {
            d.add(line.as_bytes());
        }
        assert_eq!(whole[0].checksum, d.checksum(), "order does not matter");
    }

    #[test]
    fn refuses_foreign_rows_truncation_and_unknown_tables() {
        let other = "33333333-3333-3333-3333-333333333333";
        let foreign = dump(&[&format!("1\t{other}\tx")]);
        assert!(matches!(
            read(&foreign, 100),
            Err(DumpError::ForeignRow { .. })
        ));
        let longer = dump(&[&format!("1\t{SOURCE}0\tx")]);
        assert!(matches!(
            read(&longer, 100),
            Err(DumpError::ForeignRow { .. })
        ));
        let text = dump(&[&format!("1\t{SOURCE}\tx")]);
        let cut = &text[..text.len() - 30];
        assert!(matches!(read(cut, 100), Err(DumpError::Truncated)));
        let unknown = text.replace("public.\"patients\" (", "public.\"pg_authid\" (");
        assert!(matches!(
            read(&unknown, 100),
            Err(DumpError::Malformed { .. })
        ));
        let injected = text.replace("\"note\")", "\"note\"; DROP TABLE x)");
        assert!(read(&injected, 100).is_err());
        let no_format = text.replace(FORMAT_LINE, "-- something else");
        assert!(matches!(read(&no_format, 100), Err(DumpError::Format)));
    }
}
