//! Per-principal limits (`[limits]`): how many calls one principal may have in progress on a
//! replica, open streams included, and how many operations it may start per minute. Past
//! either, the call is answered RESOURCE_EXHAUSTED before its handler runs, so one caller's
//! flood, a console's runaway loop or a billing system retrying hard cannot take the
//! connections and workers every other caller needs.
//!
//! Limits are per replica and in memory: a principal spread over N replicas may have N times
//! as much. Principals are the configured tokens and certificates, so the table is bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::LimitsConfig;

pub struct Limits {
    calls: u32,
    starts_per_minute: u32,
    used: Mutex<HashMap<String, Use>>,
}

struct Use {
    in_flight: u32,
    /// Operation starts left in the bucket, refilled at `starts_per_minute` per minute.
    starts: f64,
    refilled: Instant,
}

/// Why a call was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Exhausted {
    Calls { limit: u32 },
    Starts { per_minute: u32 },
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exhausted::Calls { limit } => write!(
                f,
                "too many calls in progress: at most {limit} at once per caller ([limits] calls_per_principal); retry when some finish"
            ),
            Exhausted::Starts { per_minute } => write!(
                f,
                "too many operations started: at most {per_minute} per minute per caller ([limits] operation_starts_per_minute); retry later"
            ),
        }
    }
}

/// A call in progress; dropping it (when the call's answer, stream included, is done)
/// frees its place.
pub struct Permit {
    limits: Arc<Limits>,
    principal: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut used = self.limits.used.lock().expect("limits table");
        if let Some(u) = used.get_mut(&self.principal) {
            u.in_flight = u.in_flight.saturating_sub(1);
        }
    }
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Arc<Self> {
        Arc::new(Limits {
            calls: config.calls_per_principal,
            starts_per_minute: config.operation_starts_per_minute,
            used: Mutex::new(HashMap::new()),
        })
    }

    /// Admits one call of `principal`; `starts_operation` also takes one operation start.
    pub fn admit(
        self: &Arc<Self>,
        principal: &str,
        starts_operation: bool,
    ) -> Result<Permit, Exhausted> {
        self.admit_at(principal, starts_operation, Instant::now())
    }

    fn admit_at(
        self: &Arc<Self>,
        principal: &str,
        starts_operation: bool,
        now: Instant,
    ) -> Result<Permit, Exhausted> {
        let burst = f64::from(self.starts_per_minute);
        let mut used = self.used.lock().expect("limits table");
        let u = used.entry(principal.to_owned()).or_insert(Use {
            in_flight: 0,
            starts: burst,
            refilled: now,
        });
        if self.calls > 0 && u.in_flight >= self.calls {
            return Err(Exhausted::Calls { limit: self.calls });
        }
        if starts_operation && self.starts_per_minute > 0 {
            let minutes = now.saturating_duration_since(u.refilled).as_secs_f64() / 60.0;
            u.starts = (u.starts + minutes * burst).min(burst);
            u.refilled = now;
            if u.starts < 1.0 {
                return Err(Exhausted::Starts {
                    per_minute: self.starts_per_minute,
                });
            }
            u.starts -= 1.0;
        }
        u.in_flight += 1;
        Ok(Permit {
            limits: self.clone(),
            principal: principal.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(calls: u32, starts: u32) -> Arc<Limits> {
        Limits::new(&LimitsConfig {
            calls_per_principal: calls,
            operation_starts_per_minute: starts,
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn calls_in_progress_are_bounded_per_principal_and_freed_on_drop() {
        let l = limits(2, 0);
        let a = l.admit("a", false).unwrap();
        let _b = l.admit("a", false).unwrap();
        assert_eq!(
            l.admit("a", false).err(),
            Some(Exhausted::Calls { limit: 2 })
        );
        // Another principal is not affected.
        let _c = l.admit("other", false).unwrap();
        drop(a);
        l.admit("a", false).unwrap();
    }

    #[test]
    fn operation_starts_refill_over_the_minute() {
        let l = limits(0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.admit_at("a", true, t0).unwrap();
        }
        assert_eq!(
            l.admit_at("a", true, t0).err(),
            Some(Exhausted::Starts { per_minute: 3 })
        );
        // Calls that start nothing still pass.
        l.admit_at("a", false, t0).unwrap();
        // A third of a minute refills one.
        let later = t0 + Duration::from_secs(20);
        l.admit_at("a", true, later).unwrap();
        assert!(l.admit_at("a", true, later).is_err());
    }

    #[test]
    fn zero_means_no_limit() {
        let l = limits(0, 0);
        let held: Vec<_> = (0..1000).map(|_| l.admit("a", true).unwrap()).collect();
        assert_eq!(held.len(), 1000);
    }
}
