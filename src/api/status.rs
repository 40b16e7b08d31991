//! The one mapping from [`Error`] to a gRPC status, with google.rpc rich details: BadRequest
//! naming the field, ResourceInfo for ALREADY_EXISTS / NOT_FOUND, PreconditionFailure naming
//! the operation that holds a tenant. Internal errors are logged here and sent without detail.
//! An operation's failure code ([`ErrorCode`]) becomes a gRPC code here too.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{Error, ErrorCode};

/// An operation's failure code, as gRPC says it (the numbers agree by construction).
impl From<ErrorCode> for Code {
    fn from(c: ErrorCode) -> Self {
        Code::from_i32(c.as_i32())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::InvalidArgument { field, reason } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation(field, reason),
            ),
            Error::AlreadyExists { kind, name } => Status::with_error_details(
                Code::AlreadyExists,
                message.clone(),
                ErrorDetails::with_resource_info(kind, name, "", message),
            ),
            Error::NotFound { kind, name } => Status::with_error_details(
                Code::NotFound,
                message.clone(),
                ErrorDetails::with_resource_info(kind, name, "", message),
            ),
            Error::FailedPrecondition { reason, operation } => {
                let subject = operation
                    .map(|id| format!("operations/{id}"))
                    .unwrap_or_default();
                let kind = if operation.is_some() {
                    "OPERATION_IN_PROGRESS"
                } else {
                    "STATE"
                };
                Status::with_error_details(
                    Code::FailedPrecondition,
                    message,
                    ErrorDetails::with_precondition_failure_violation(kind, subject, reason),
                )
            }
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Aborted(m) => Status::aborted(m),
            Error::Unavailable(m) => {
                tracing::warn!(error = %m, "request failed: unavailable");
                Status::unavailable("service temporarily unavailable; retry")
            }
            Error::Internal(m) => {
                tracing::error!(error = %m, "request failed: internal error");
                Status::internal("internal error")
            }
        }
    }
}
