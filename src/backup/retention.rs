//! Which backups a policy keeps. A backup is kept when any rule keeps it (the rules of
//! restic's `forget` and pgBackRest's time-based retention, in one): the newest
//! `keep_last`; every one taken within `keep_days` of now; the newest of each of the
//! `keep_monthly` most recent calendar months (UTC) that have one; the same per year for
//! `keep_yearly`. The newest backup is always kept, whatever the rules say. Legal holds are
//! not this module's business: [`prune`] skips held exports whatever [`kept`] says.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Duration, Utc};
use uuid::Uuid;

use super::{Retention, removal};
use crate::context::Context;
use crate::error::Error;
use crate::tenant::TenantRef;

/// One backup as retention sees it: when its data is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backup {
    pub id: Uuid,
    pub at: DateTime<Utc>,
}

/// The ids of `backups` that `r` keeps at `now`.
pub fn kept(r: &Retention, backups: &[Backup], now: DateTime<Utc>) -> HashSet<Uuid> {
    let mut newest_first = backups.to_vec();
    newest_first.sort_by(|a, b| b.at.cmp(&a.at).then(b.id.cmp(&a.id)));
    let mut keep: HashSet<Uuid> = HashSet::new();
    keep.extend(
        newest_first
            .iter()
            .take(r.keep_last.max(1) as usize)
            .map(|b| b.id),
    );
    let horizon = now - Duration::days(r.keep_days as i64);
    if r.keep_days > 0 {
        keep.extend(newest_first.iter().filter(|b| b.at > horizon).map(|b| b.id));
    }
    keep.extend(newest_per(&newest_first, r.keep_monthly, |t| {
        (t.year(), t.month())
    }));
    keep.extend(newest_per(&newest_first, r.keep_yearly, |t| (t.year(), 0)));
    keep
}

/// Applies the tenant's policy to its scheduled exports at `now`: removes every one the
/// policy does not keep, unless a legal hold covers it (a hold on the tenant covers all).
/// Exports taken on request and a deleted tenant's handover export are never pruned.
/// Returns the removed exports.
pub async fn prune(
    deps: &Context,
    tenant_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, Error> {
    let registry = &deps.registry;
    // A removal a crash interrupted is finished first.
    for id in registry.exports_being_removed(tenant_id).await? {
        removal::remove(deps, id, "an interrupted removal, finished").await?;
    }
    let tenant = registry.get_tenant(&TenantRef::Id(tenant_id)).await?;
    let Some(policy) = registry
        .effective_backup_policy(tenant_id, &tenant.plan)
        .await?
    else {
        return Ok(Vec::new());
    };
    let holds = registry.holds(tenant_id).await?;
    if holds.iter().any(|h| h.export_id.is_none()) {
        return Ok(Vec::new());
    }
    let backups: Vec<Backup> = registry
        .scheduled_exports(tenant_id)
        .await?
        .into_iter()
        .map(|(id, at)| Backup { id, at })
        .collect();
    let keep = kept(&policy.spec.retention, &backups, now);
    let by = format!("retention of backup policy {}", policy.id);
    let mut removed = Vec::new();
    for b in backups {
        let held = holds.iter().any(|h| h.export_id == Some(b.id));
        if keep.contains(&b.id) || held {
            continue;
        }
        match removal::remove(deps, b.id, &by).await {
            Ok(_) => removed.push(b.id),
            // A hold placed since the holds were read: it wins.
            Err(Error::FailedPrecondition { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// The newest backup of each of the `n` most recent periods that have one.
fn newest_per(
    newest_first: &[Backup],
    n: u32,
    period: impl Fn(DateTime<Utc>) -> (i32, u32),
) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    newest_first
        .iter()
        .filter(|b| seen.insert(period(b.at)))
        .take(n as usize)
        .map(|b| b.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// Daily backups at 01:00 from 2024-01-01 to 2026-12-01.
    fn daily() -> Vec<Backup> {
        let first = Utc.with_ymd_and_hms(2024, 1, 1, 1, 0, 0).unwrap();
        let last = Utc.with_ymd_and_hms(2026, 12, 1, 1, 0, 0).unwrap();
        let mut out = Vec::new();
        let mut at = first;
        while at <= last {
            out.push(Backup {
                id: Uuid::new_v4(),
                at,
            });
            at += Duration::days(1);
        }
        out
    }

    fn dates(backups: &[Backup], keep: &HashSet<Uuid>) -> Vec<String> {
        let mut d: Vec<_> = backups
            .iter()
            .filter(|b| keep.contains(&b.id))
            .map(|b| b.at.format("%Y-%m-%d").to_string())
            .collect();
        d.sort();
        d
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
    }

    fn r(keep_last: u32, keep_days: u32, keep_monthly: u32, keep_yearly: u32) -> Retention {
        Retention {
            keep_last,
            keep_days,
            keep_monthly,
            keep_yearly,
        }
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let b = daily();
        let keep = kept(&r(3, 0, 0, 0), &b, now());
        assert_eq!(dates(&b, &keep), ["2026-11-29", "2026-11-30", "2026-12-01"]);
    }

    #[test]
    fn keep_days_keeps_everything_within_the_window() {
        let b = daily();
        // Within 3 days of 2026-12-01 12:00: after 2026-11-28 12:00.
        let keep = kept(&r(0, 3, 0, 0), &b, now());
        assert_eq!(dates(&b, &keep), ["2026-11-29", "2026-11-30", "2026-12-01"]);
    }

    #[test]
    fn monthly_and_yearly_keep_the_newest_of_each_period() {
        let b = daily();
        let keep = kept(&r(0, 0, 3, 0), &b, now());
        // December has one so far (the 1st), then the last days of November and October.
        assert_eq!(dates(&b, &keep), ["2026-10-31", "2026-11-30", "2026-12-01"]);
        let keep = kept(&r(0, 0, 0, 2), &b, now());
        assert_eq!(dates(&b, &keep), ["2025-12-31", "2026-12-01"]);
    }

    #[test]
    fn rules_add_up_and_the_newest_always_stays() {
        let b = daily();
        let keep = kept(&r(1, 2, 2, 3), &b, now());
        assert_eq!(
            dates(&b, &keep),
            ["2024-12-31", "2025-12-31", "2026-11-30", "2026-12-01"]
        );
        // A policy keeping only old months still keeps the newest backup.
        let old: Vec<_> = b.iter().copied().filter(|x| x.at.year() == 2024).collect();
        let keep = kept(&r(0, 1, 0, 0), &old, now());
        assert_eq!(dates(&old, &keep), ["2024-12-31"]);
        assert!(kept(&r(2, 0, 0, 0), &[], now()).is_empty());
    }
}
