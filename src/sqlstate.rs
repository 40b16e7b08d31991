//! The one place that reads PostgreSQL's SQLSTATE codes. The registry, the data plane and the
//! workflows ask [`classify`] what a failed statement means, then map that to their own typed
//! error; nobody else compares code strings.
//!
//! The classes are the decisions callers make: retry (`Transient`: serialization failures
//! and deadlocks are retried, never reported as internal errors), name the violated
//! constraint (`UniqueViolation`, `ForeignKeyViolation`), treat a racing creator as success
//! (`DuplicateObject`), tell a fenced tenant (`Fenced`, the write fence's own TF001), or skip
//! an object dropped under a scan (`Gone`).

/// SQLSTATE the write fence raises (`dataplane::fence`): the tenant is being moved or deleted.
pub const FENCED: &str = "TF001";

/// What a failed statement means to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Try again: connection trouble (08…), serialization failure (40001), deadlock (40P01),
    /// lock timeout (55P03), a server shutting down (57P0x), resource exhaustion (53…), or
    /// two sessions updating one catalog row at once.
    Transient,
    /// 23505: `constraint` names the unique index.
    UniqueViolation,
    /// 23503.
    ForeignKeyViolation,
    /// Another integrity rule (23…: not-null, check, exclusion).
    IntegrityViolation,
    /// The object to create already exists: 42710 (role), 42P04 (database), 42P06 (schema),
    /// 42P07 (table).
    DuplicateObject,
    /// TF001: the tenant's writes are fenced.
    Fenced,
    /// The object a statement named no longer exists: database (3D000), schema (3F000) or
    /// table (42P01), e.g. dropped by another tenant's operation while a scan ran.
    Gone,
    /// 2BP01: a role or object still owns or holds something (DROP ROLE of a role that owns
    /// objects in some database).
    StillReferenced,
    /// Anything else (including errors that are not from the server).
    Other,
}

/// The SQLSTATE of a server error.
pub fn code(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// The constraint a server error names.
pub fn constraint(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

pub fn classify(e: &sqlx::Error) -> Class {
    let db = match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            return Class::Transient;
        }
        sqlx::Error::Database(db) => db,
        _ => return Class::Other,
    };
    let Some(code) = db.code() else {
        return Class::Other;
    };
    match code.as_ref() {
        "23505" => Class::UniqueViolation,
        "23503" => Class::ForeignKeyViolation,
        c if c.starts_with("23") => Class::IntegrityViolation,
        "42710" | "42P04" | "42P06" | "42P07" => Class::DuplicateObject,
        FENCED => Class::Fenced,
        "3D000" | "3F000" | "42P01" => Class::Gone,
        "2BP01" => Class::StillReferenced,
        "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" => Class::Transient,
        c if c.starts_with("08") || c.starts_with("53") => Class::Transient,
        // Two sessions changing one catalog row at once (e.g. concurrent GRANTs on the shared
        // database's ACL): XX000, but the retry succeeds.
        _ if db.message().contains("tuple concurrently updated") => Class::Transient,
        _ => Class::Other,
    }
}

pub fn is_transient(e: &sqlx::Error) -> bool {
    classify(e) == Class::Transient
}

/// True when `e` is a unique violation of `constraint`.
pub fn is_unique(e: &sqlx::Error, name: &str) -> bool {
    classify(e) == Class::UniqueViolation && constraint(e) == Some(name)
}

/// True when `e` broke an integrity constraint (23…: unique, foreign key, not-null, check).
pub fn is_integrity_violation(e: &sqlx::Error) -> bool {
    matches!(
        classify(e),
        Class::UniqueViolation | Class::ForeignKeyViolation | Class::IntegrityViolation
    )
}

/// True when a statement writing many rows at once met a row it conflicts with that applying
/// the same rows one at a time, in their order, may not: a unique or exclusion violation
/// (23505, 23P01), or one key written twice by an `ON CONFLICT DO UPDATE` (21000).
pub fn is_set_conflict(e: &sqlx::Error) -> bool {
    classify(e) == Class::UniqueViolation || matches!(code(e).as_deref(), Some("23P01" | "21000"))
}

/// True when `e` says the object to create exists already, or that a racing creator inserted
/// the same catalog row first (23505 on a catalog index): creation converged.
pub fn is_already_created(e: &sqlx::Error) -> bool {
    matches!(classify(e), Class::DuplicateObject | Class::UniqueViolation)
}
