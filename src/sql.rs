//! The one place where SQL text is assembled at run time.
//!
//! sqlx only accepts `&'static str` SQL unless it is wrapped in [`sqlx::AssertSqlSafe`]. Data
//! definition (CREATE SCHEMA, CREATE ROLE, GRANT …) cannot take bind parameters, so the names
//! in it must be spliced into the text. Invariants kept here:
//!
//! - an identifier reaches SQL only as an [`Ident`], which is validated when it is built
//!   (1–63 bytes of `[a-z0-9_]`, starting with a letter or `_`) and always double-quoted;
//! - a literal reaches SQL only through [`literal`], which quotes with standard string syntax;
//! - everything else is a `&'static str` fragment written in this crate, a migration file
//!   shipped in the binary, or a definition PostgreSQL printed for an object those migrations
//!   created ([`Statement::catalog_definition`]).
//!
//! Values that can be bound (everything in DML) are always bound, never spliced.

use std::fmt;

use sqlx::AssertSqlSafe;

/// PostgreSQL truncates identifiers longer than this (NAMEDATALEN - 1).
pub const MAX_IDENT_LEN: usize = 63;

/// A validated SQL identifier (schema, database, role, table name).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid SQL identifier {0:?}: use 1-63 characters of a-z, 0-9 and _, starting with a letter or _"
)]
pub struct InvalidIdent(pub String);

impl Ident {
    /// Validates `name`. Only lower-case names are accepted so that a name means the same
    /// thing quoted or unquoted, in psql, in pg_dump output and in our catalog queries.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidIdent> {
        let name = name.into();
        let mut chars = name.chars();
        let valid_first = matches!(chars.next(), Some('a'..='z' | '_'));
        let valid_rest = chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'));
        if valid_first && valid_rest && name.len() <= MAX_IDENT_LEN {
            Ok(Ident(name))
        } else {
            Err(InvalidIdent(name))
        }
    }

    /// For names written in this crate; a bad one is a programming error.
    pub fn from_static(name: &'static str) -> Self {
        Self::new(name).expect("static identifier is valid")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Quoted form, ready to splice: `"name"`.
impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Validation excludes '"', so no doubling is needed; quoting keeps reserved words safe.
        write!(f, "\"{}\"", self.0)
    }
}

impl fmt::Debug for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Quotes a string as an SQL literal (`'it''s'`). A value with a backslash is written as an
/// escape string (`E'a\\b'`), which means the same whatever the server's
/// `standard_conforming_strings`: a plain literal would let a backslash escape the closing
/// quote on a server where it is off. NUL cannot appear in a PostgreSQL text value and is
/// refused.
pub fn literal(value: &str) -> Result<String, InvalidLiteral> {
    if value.contains('\0') {
        return Err(InvalidLiteral);
    }
    let quoted = value.replace('\'', "''");
    Ok(if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SQL literal contains a NUL byte")]
pub struct InvalidLiteral;

/// A statement assembled from static fragments, [`Ident`]s and [`literal`]s.
pub struct Statement(String);

impl Statement {
    pub fn new(fragment: &'static str) -> Self {
        Statement(fragment.to_owned())
    }
    pub fn push(mut self, fragment: &'static str) -> Self {
        self.0.push_str(fragment);
        self
    }
    pub fn ident(mut self, ident: &Ident) -> Self {
        self.0.push_str(&ident.to_string());
        self
    }
    /// `schema.table`, both quoted.
    pub fn qualified(self, schema: &Ident, name: &Ident) -> Self {
        self.ident(schema).push(".").ident(name)
    }
    pub fn literal(mut self, value: &str) -> Result<Self, InvalidLiteral> {
        self.0.push_str(&literal(value)?);
        Ok(self)
    }
    /// An integer where the grammar wants a number, not a string (`CONNECTION LIMIT 20`).
    pub fn integer(mut self, value: i64) -> Self {
        self.0.push_str(&value.to_string());
        self
    }
    /// A definition PostgreSQL printed (`pg_get_indexdef`, `pg_get_constraintdef`) for an
    /// object tenantd's own migrations created in a container tenantd controls, to build the
    /// same object again (a restore's staging tables). Never text from a request or an archive.
    pub fn catalog_definition(definition: String) -> Self {
        Statement(definition)
    }
    /// Appends another statement's text.
    pub fn append(mut self, other: Statement) -> Self {
        self.0.push_str(&other.0);
        self
    }
    /// Splices a whole SQL file the tenant schema's owner supplied (a migration or a seed,
    /// recorded in the registry): their DDL, run by the migrator in one transaction.
    pub fn trusted_file(mut self, text: &str) -> Self {
        self.0.push_str(text);
        self
    }
    pub fn into_sql(self) -> AssertSqlSafe<String> {
        AssertSqlSafe(self.0)
    }
    /// For a statement run more than once.
    pub fn to_sql(&self) -> AssertSqlSafe<String> {
        AssertSqlSafe(self.0.clone())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["a", "_x", "t_0123456789abcdef", &"a".repeat(63)] {
            assert!(Ident::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_that_could_break_quoting() {
        for bad in [
            "",
            "A",
            "1abc",
            "a-b",
            "a\"b",
            "a b",
            "a;drop",
            "é",
            "a\0",
            &"a".repeat(64),
        ] {
            assert!(Ident::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quotes_identifiers_and_literals() {
        let s = Statement::new("GRANT USAGE ON SCHEMA ")
            .ident(&Ident::from_static("select"))
            .push(" TO ")
            .ident(&Ident::from_static("r"));
        assert_eq!(s.as_str(), "GRANT USAGE ON SCHEMA \"select\" TO \"r\"");
        assert_eq!(literal("it's").unwrap(), "'it''s'");
        assert_eq!(literal("a\\'b").unwrap(), "E'a\\\\''b'");
        assert!(literal("a\0").is_err());
    }
}
