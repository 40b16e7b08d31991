//! A backup policy: when to back a tenant up (a 5-field cron expression in UTC, so at most
//! once a minute), how many backups to keep, and how often to prove the newest restorable.
//! Values of these types are valid by construction.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use uuid::Uuid;

use crate::error::Error;

/// The most of each kind of backup a policy may keep: bounds that no contract needs more of
/// (a century of days) and that keep a prune's work bounded.
pub const MAX_KEEP_LAST: u32 = 10_000;
pub const MAX_KEEP_DAYS: u32 = 36_500;
pub const MAX_KEEP_MONTHLY: u32 = 1_200;
pub const MAX_KEEP_YEARLY: u32 = 100;

/// A 5-field cron expression (minute hour day-of-month month day-of-week), evaluated in UTC.
#[derive(Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
}

impl Schedule {
    /// Parses `expr` for request field `field`: exactly five fields (no seconds, no years),
    /// and at least one time it matches.
    pub fn parse(field: &str, expr: &str) -> Result<Self, Error> {
        let expr = expr.trim();
        if expr.is_empty() {
            return Err(Error::invalid(
                field,
                "must be a 5-field cron expression in UTC",
            ));
        }
        if expr.len() > 200 || expr.chars().any(char::is_control) {
            return Err(Error::invalid(
                field,
                "must be at most 200 printable characters",
            ));
        }
        if !expr.starts_with('@') && expr.split_whitespace().count() != 5 {
            return Err(Error::invalid(
                field,
                format!(
                    "{expr:?} must have exactly 5 fields (minute hour day-of-month month \
                     day-of-week, in UTC): schedules run at most once a minute"
                ),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| {
                Error::invalid(field, format!("{expr:?} is not a cron expression: {e}"))
            })?;
        let schedule = Schedule {
            expr: expr.to_owned(),
            cron,
        };
        if schedule.next_after(Utc::now()).is_none() {
            return Err(Error::invalid(field, format!("{expr:?} never matches")));
        }
        Ok(schedule)
    }

    pub fn as_str(&self) -> &str {
        &self.expr
    }

    /// The latest slot at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&t, true).ok()
    }

    /// The first slot after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }

    /// The slot due at `now` for a schedule in effect since `since`: the latest one at or
    /// before `now`, if it is not before `since`. After downtime this is the one slot to
    /// catch up with; the ones missed before it are not made up for.
    pub fn due(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.latest_at_or_before(now).filter(|s| *s >= since)
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Schedule").field(&self.expr).finish()
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

impl FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Schedule::parse("schedule", s)
    }
}

/// How many backups to keep (docs/backups.md, "Retention"); a backup any rule keeps is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// The newest N.
    pub keep_last: u32,
    /// Every backup of the last N days.
    pub keep_days: u32,
    /// The newest of each of the last N calendar months (UTC) that have one.
    pub keep_monthly: u32,
    /// The newest of each of the last N calendar years (UTC) that have one.
    pub keep_yearly: u32,
}

impl Retention {
    pub fn new(
        keep_last: i64,
        keep_days: i64,
        keep_monthly: i64,
        keep_yearly: i64,
    ) -> Result<Self, Error> {
        fn bounded(field: &str, v: i64, max: u32) -> Result<u32, Error> {
            if v < 0 || v > max as i64 {
                return Err(Error::invalid(
                    field,
                    format!("must be 0 to {max}, got {v}"),
                ));
            }
            Ok(v as u32)
        }
        let r = Retention {
            keep_last: bounded("keep_last", keep_last, MAX_KEEP_LAST)?,
            keep_days: bounded("keep_days", keep_days, MAX_KEEP_DAYS)?,
            keep_monthly: bounded("keep_monthly", keep_monthly, MAX_KEEP_MONTHLY)?,
            keep_yearly: bounded("keep_yearly", keep_yearly, MAX_KEEP_YEARLY)?,
        };
        if r == Retention::default() {
            return Err(Error::invalid(
                "keep_last",
                "a policy must keep something: set keep_last, keep_days, keep_monthly or \
                 keep_yearly",
            ));
        }
        Ok(r)
    }
}

/// Whom a policy covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyScope {
    Tenant(Uuid),
    /// Every tenant of the plan without a policy of its own.
    Plan(String),
}

/// What a caller sets.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec {
    pub schedule: Schedule,
    pub retention: Retention,
    /// `None`: no drills.
    pub drill: Option<Schedule>,
}

/// A stored policy.
#[derive(Debug, Clone)]
pub struct BackupPolicy {
    pub id: Uuid,
    pub scope: PolicyScope,
    pub spec: PolicySpec,
    /// Slots before this never fire (set when the schedule is first set or changed).
    pub effective_from: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl BackupPolicy {
    /// The backup slot due at `now`, if any.
    pub fn due(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.spec.schedule.due(self.effective_from, now)
    }

    /// The drill slot due at `now`, if the policy drills.
    pub fn drill_due(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.spec.drill.as_ref()?.due(self.effective_from, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, m, s).unwrap()
    }

    #[test]
    fn schedules_have_five_fields_and_match_some_time() {
        assert!(Schedule::parse("schedule", "0 * * * *").is_ok());
        assert!(Schedule::parse("schedule", "@daily").is_ok());
        for bad in [
            "",
            "* * * *",
            "0 0 * * * *",
            "0 0 * * * 2027",
            "61 * * * *",
            "0 0 30 2 *",
        ] {
            let e = Schedule::parse("schedule", bad).unwrap_err();
            assert!(
                matches!(e, Error::InvalidArgument { ref field, .. } if field == "schedule"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn the_due_slot_is_the_latest_one_since_the_policy_took_effect() {
        let hourly = Schedule::parse("schedule", "0 * * * *").unwrap();
        // Down from 09:10 to 14:20: one slot to catch up with, the latest.
        assert_eq!(hourly.due(at(9, 10, 0), at(14, 20, 0)), Some(at(14, 0, 0)));
        assert_eq!(hourly.due(at(9, 10, 0), at(14, 0, 0)), Some(at(14, 0, 0)));
        // Set at 09:10: nothing is due before 10:00.
        assert_eq!(hourly.due(at(9, 10, 0), at(9, 59, 59)), None);
        assert_eq!(hourly.next_after(at(14, 0, 0)), Some(at(15, 0, 0)));
    }

    #[test]
    fn retention_keeps_something_and_is_bounded() {
        assert!(Retention::new(0, 0, 0, 0).is_err());
        assert!(Retention::new(-1, 1, 0, 0).is_err());
        assert!(Retention::new(0, 0, 0, 101).is_err());
        assert_eq!(Retention::new(0, 45, 12, 7).unwrap().keep_days, 45);
    }
}
