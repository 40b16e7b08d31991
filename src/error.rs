//! The service's typed error. Every layer below converts into it; `api::status` maps it to a
//! gRPC status exactly once.

use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed. `field` names the request field, as AIP-193 BadRequest wants.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },

    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },

    /// The system is not in a state that allows the request; `operation` names the operation
    /// that holds the tenant when that is why.
    #[error("{reason}")]
    FailedPrecondition {
        reason: String,
        operation: Option<Uuid>,
    },

    /// The caller may not act on this resource (e.g. a token limited to other tenants).
    #[error("{0}")]
    PermissionDenied(String),

    /// A concurrent change got in the way (the tenant moved while a credential was issued):
    /// retrying the call succeeds.
    #[error("{0}")]
    Aborted(String),

    #[error("unavailable: {0}")]
    Unavailable(String),

    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            name: name.into(),
        }
    }
}

/// Why an operation failed, as the domain says it. The numbers are google.rpc.Code's, because
/// the registry stores them in `operations.error_code` and older rows must stay readable;
/// `api::status` is still the one place that turns them into a gRPC status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ErrorCode {
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    NotFound = 5,
    AlreadyExists = 6,
    FailedPrecondition = 9,
    Aborted = 10,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
}

impl ErrorCode {
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// A stored code; one this release does not know reads as `Unknown`.
    pub fn from_i32(code: i32) -> Self {
        use ErrorCode::*;
        [
            Cancelled,
            InvalidArgument,
            NotFound,
            AlreadyExists,
            FailedPrecondition,
            Aborted,
            Internal,
            Unavailable,
            DataLoss,
        ]
        .into_iter()
        .find(|c| c.as_i32() == code)
        .unwrap_or(Unknown)
    }
}

/// Registry statements: transient failures (connections, serialization failures, deadlocks,
/// lock timeouts) are UNAVAILABLE, which callers and the engine retry; never INTERNAL.
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if crate::sqlstate::is_transient(&e) {
            Error::Unavailable(format!("registry: {e}"))
        } else {
            Error::Internal(format!("registry: {e}"))
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::keys::KeyError> for Error {
    fn from(e: crate::keys::KeyError) -> Self {
        use crate::keys::KeyError;
        match e {
            KeyError::Unavailable(_) => Error::Unavailable(e.to_string()),
            KeyError::NotFound(name) => Error::not_found("key", name),
            KeyError::Unusable { .. } | KeyError::Undecryptable | KeyError::BadSignature => {
                Error::FailedPrecondition {
                    reason: e.to_string(),
                    operation: None,
                }
            }
            KeyError::Config(_) => Error::Internal(e.to_string()),
        }
    }
}

/// Data-plane statements made for a call (not a workflow step): transient failures are
/// UNAVAILABLE, a data plane not in a state to proceed is FAILED_PRECONDITION.
impl From<crate::dataplane::DataPlaneError> for Error {
    fn from(e: crate::dataplane::DataPlaneError) -> Self {
        use crate::dataplane::DataPlaneError;
        match e {
            e if e.is_transient() => Error::Unavailable(e.to_string()),
            DataPlaneError::Precondition(reason) => Error::FailedPrecondition {
                reason,
                operation: None,
            },
            e => Error::Internal(e.to_string()),
        }
    }
}

impl From<crate::blobs::BlobError> for Error {
    fn from(e: crate::blobs::BlobError) -> Self {
        use crate::blobs::BlobError;
        match e {
            BlobError::NotFound(name) => Error::not_found("object", name),
            BlobError::Io(_) => Error::Unavailable(e.to_string()),
            BlobError::InvalidKey(_) => Error::Internal(e.to_string()),
        }
    }
}
