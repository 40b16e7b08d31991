//! How a step failed, and so whether the engine tries it again. Every lower layer's error
//! converts here once (`?` in a step does the right thing); the data plane, the key service
//! and the object store know nothing of the engine.

use std::fmt::Display;

use crate::blobs::BlobError;
use crate::dataplane::DataPlaneError;
use crate::error::{Error, ErrorCode};
use crate::keys::KeyError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StepError {
    /// Transient (connection lost, serialization failure, deadlock, lock timeout): retried
    /// with exponential back-off.
    #[error("{0}")]
    Retryable(String),
    /// Permanent: compensation runs and the operation fails with this code and message.
    #[error("{message}")]
    Fatal { code: ErrorCode, message: String },
    /// Not failed: waiting for something outside the workflow (a person's approval). The
    /// operation is parked at this step, its lease released, and runs the step again after
    /// `recheck` or when woken ([`crate::registry::Registry::wake_operation`]).
    #[error("{reason}")]
    Wait {
        reason: String,
        recheck: std::time::Duration,
    },
}

impl StepError {
    pub fn fatal(code: ErrorCode, message: impl Into<String>) -> Self {
        StepError::Fatal {
            code,
            message: message.into(),
        }
    }

    /// The system is not in a state the step can proceed from (FAILED_PRECONDITION).
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::fatal(ErrorCode::FailedPrecondition, message)
    }

    /// A broken invariant: a bug, or state written by something else (INTERNAL).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::fatal(ErrorCode::Internal, message)
    }

    /// The workflow state lacks what an earlier step should have recorded.
    pub fn missing(what: &str) -> Self {
        Self::internal(format!("workflow state has no {what}"))
    }

    /// The code the operation ends with when this error fails it.
    pub fn code(&self) -> ErrorCode {
        match self {
            StepError::Fatal { code, .. } => *code,
            StepError::Retryable(_) | StepError::Wait { .. } => ErrorCode::Unavailable,
        }
    }
}

/// Turns any error into a step error that says whether to retry:
/// `registry_call().await.retryable()?`, `parse(x).fatal(ErrorCode::DataLoss)?`.
pub trait StepResultExt<T> {
    fn retryable(self) -> Result<T, StepError>;
    fn fatal(self, code: ErrorCode) -> Result<T, StepError>;
}

impl<T, E: Display> StepResultExt<T> for Result<T, E> {
    fn retryable(self) -> Result<T, StepError> {
        self.map_err(|e| StepError::Retryable(e.to_string()))
    }

    fn fatal(self, code: ErrorCode) -> Result<T, StepError> {
        self.map_err(|e| StepError::fatal(code, e.to_string()))
    }
}

impl From<Error> for StepError {
    fn from(e: Error) -> Self {
        match e {
            Error::Unavailable(m) => StepError::Retryable(m),
            Error::FailedPrecondition { reason, .. } => StepError::precondition(reason),
            other => StepError::internal(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for StepError {
    fn from(e: sqlx::Error) -> Self {
        Error::from(e).into()
    }
}

impl From<KeyError> for StepError {
    fn from(e: KeyError) -> Self {
        Error::from(e).into()
    }
}

impl From<BlobError> for StepError {
    fn from(e: BlobError) -> Self {
        Error::from(e).into()
    }
}

impl From<DataPlaneError> for StepError {
    fn from(e: DataPlaneError) -> Self {
        if e.is_transient() {
            return StepError::Retryable(e.to_string());
        }
        match e {
            DataPlaneError::UnknownCluster(_) | DataPlaneError::Precondition(_) => {
                StepError::precondition(e.to_string())
            }
            _ => StepError::internal(e.to_string()),
        }
    }
}
