//! Long-running operations (AIP-151) as the domain sees them: an operation runs one workflow
//! for one tenant, step by step; its steps, their attempts and progress are what callers watch.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{Error, ErrorCode};

macro_rules! string_enum {
    ($name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }
        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err(Error::Internal(format!(
                        concat!("unknown ", stringify!($name), " {:?}"), s))),
                }
            }
        }
    };
}

pub(crate) use string_enum;

string_enum!(OperationState {
    Pending => "pending",
    Running => "running",
    Compensating => "compensating",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl OperationState {
    pub fn is_done(self) -> bool {
        matches!(
            self,
            OperationState::Succeeded | OperationState::Failed | OperationState::Cancelled
        )
    }
}

string_enum!(StepState {
    Pending => "pending",
    Running => "running",
    Done => "done",
    Failed => "failed",
});

#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub state: StepState,
    pub attempts: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub progress_done: i64,
    pub progress_total: i64,
    /// Per-item progress (e.g. per table), when the step reports it.
    pub progress_items: Vec<ProgressItem>,
    pub last_error: Option<String>,
}

/// Progress of one item of a step, e.g. rows copied of one table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgressItem {
    pub name: String,
    pub done: i64,
    pub total: i64,
}

/// Why an operation did not succeed: a code, a message and the failing step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationError {
    pub code: ErrorCode,
    pub message: String,
    pub step: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub id: Uuid,
    pub kind: String,
    /// `None` for a fleet operation (a rollout), which belongs to no tenant.
    pub tenant_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub state: OperationState,
    pub steps: Vec<Step>,
    pub cancel_requested: bool,
    pub error: Option<OperationError>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The workflow's stored state (a versioned envelope), for kind-specific details.
    pub data: serde_json::Value,
}

impl Operation {
    pub fn done(&self) -> bool {
        self.state.is_done()
    }

    pub fn name(&self) -> String {
        format!("operations/{}", self.id)
    }
}
