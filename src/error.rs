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

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                Error::Unavailable(format!("registry: {e}"))
            }
            _ => Error::Internal(format!("registry: {e}")),
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
