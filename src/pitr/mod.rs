//! Physical backups and WAL archiving, through pgBackRest (docs/pitr.md): the engine that
//! backs up whole clusters and replays their WAL to any moment. tenantd does not copy
//! WAL or data files itself; it writes pgBackRest's configuration, runs its commands, reads
//! its `info`, and starts a restored copy as a private side cluster ([`side`]) from which one
//! tenant can be taken as it was at that moment.
//!
//! - [`pgbackrest`]: the configuration file (one stanza per cluster), `stanza-create`,
//!   `check`, `backup`, `info` and `restore` to a target time, run as the owner of the data
//!   directory;
//! - [`side`]: a cluster restored into a private directory, started on a socket only
//!   (never on TCP), paused at the target, removed when dropped;
//! - [`schedule`]: base backups on the `[pitr]` schedule, on every replica, once per slot.

pub mod pgbackrest;
pub mod schedule;
pub mod side;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    #[error(
        "pgbackrest not found on PATH: install the Debian package pgbackrest (scripts/setup does)"
    )]
    NotInstalled,
    #[error("pgbackrest {command} failed: {detail}")]
    Command { command: String, detail: String },
    #[error("pgbackrest info: {0}")]
    Info(String),
    #[error("{0}")]
    Io(String),
    #[error("side cluster: {0}")]
    Side(String),
    /// The moment asked for is not one the backups and archived WAL can reach.
    #[error("{0}")]
    Unreachable(String),
}

impl From<PitrError> for crate::error::Error {
    fn from(e: PitrError) -> Self {
        match e {
            PitrError::NotInstalled | PitrError::Unreachable(_) => {
                crate::error::Error::FailedPrecondition {
                    reason: e.to_string(),
                    operation: None,
                }
            }
            other => crate::error::Error::Unavailable(other.to_string()),
        }
    }
}

/// Point-in-time restores on this replica: pgBackRest for the `[pitr]` clusters and the
/// work directory side clusters are restored under.
#[derive(Debug)]
pub struct Pitr {
    pub pgbackrest: pgbackrest::PgBackRest,
    work_dir: PathBuf,
}

impl Pitr {
    pub fn new(pgbackrest: pgbackrest::PgBackRest, work_dir: &Path) -> Self {
        Pitr {
            pgbackrest,
            work_dir: work_dir.to_owned(),
        }
    }

    /// Whether the cluster's WAL is archived and backed up here.
    pub fn covers(&self, cluster: &str) -> bool {
        self.pgbackrest.has_stanza(cluster)
    }

    /// Where the side cluster of operation `op` lives: derived from the operation, so a
    /// resumed or compensating worker finds what a crashed one left.
    pub fn side_dir(&self, op: Uuid) -> PathBuf {
        self.work_dir.join("side").join(op.simple().to_string())
    }

    /// The directory side clusters are restored under (its free space is what a restore
    /// needs).
    pub fn side_root(&self) -> PathBuf {
        self.work_dir.join("side")
    }
}

/// pgBackRest for the `[pitr]` clusters: their stanzas, with the superuser password taken
/// from each cluster's `admin_url` (pgBackRest connects over the cluster's socket).
pub fn configure(
    pitr: &crate::config::PitrConfig,
    clusters: &[crate::config::ClusterConfig],
) -> Result<pgbackrest::PgBackRest, PitrError> {
    let stanzas = pitr
        .clusters
        .iter()
        .map(|c| {
            let admin = clusters
                .iter()
                .find(|k| k.name == c.name)
                .ok_or_else(|| PitrError::Io(format!("no cluster named {:?}", c.name)))?;
            Ok(pgbackrest::Stanza {
                name: c.name.clone(),
                pg_path: c.data_dir.clone(),
                pg_port: c.port,
                pg_socket: c.socket_dir.clone(),
                password: url_password(&admin.admin_url).unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, PitrError>>()?;
    let s3 = pitr.s3.as_ref().map(s3_repository).transpose()?;
    let repo = pgbackrest::Repository {
        path: match (&pitr.repo_path, &s3) {
            (Some(p), _) => p.clone(),
            (None, Some(_)) => PathBuf::from("/tenantd"),
            (None, None) => return Err(PitrError::Io("pitr.repo_path is not set".into())),
        },
        retention_full: pitr.retention_full,
        s3,
    };
    pgbackrest::PgBackRest::configure(&pitr.work_dir, &repo, stanzas)
}

fn s3_repository(c: &crate::config::PitrS3) -> Result<pgbackrest::S3Repository, PitrError> {
    let key = match c.key_type.as_str() {
        "web-id" => pgbackrest::S3Key::WebId,
        "shared" => {
            let file = c
                .credentials_file
                .as_ref()
                .ok_or_else(|| PitrError::Io("pitr.s3.credentials_file is not set".into()))?;
            let text = crate::secret_file::read(file)
                .map_err(|e| PitrError::Io(format!("{}: {e}", file.display())))?
                .ok_or_else(|| PitrError::Io(format!("{} does not exist", file.display())))?;
            let (key_id, secret) =
                shared_key(&String::from_utf8_lossy(&text)).ok_or_else(|| {
                    PitrError::Io(format!(
                        "{}: no aws_access_key_id and aws_secret_access_key",
                        file.display()
                    ))
                })?;
            pgbackrest::S3Key::Shared { key_id, secret }
        }
        _ => pgbackrest::S3Key::Auto,
    };
    Ok(pgbackrest::S3Repository {
        bucket: c.bucket.clone(),
        region: c.region.clone(),
        endpoint: c.endpoint.clone(),
        port: c.port,
        path_style: c.path_style,
        verify_tls: c.verify_tls,
        ca_file: c.ca_file.clone(),
        key,
    })
}

/// The key in an AWS credentials file: its `[default]` profile, else the first.
fn shared_key(text: &str) -> Option<(String, String)> {
    let mut profiles: Vec<(String, Option<String>, Option<String>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            profiles.push((name.trim().to_owned(), None, None));
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if profiles.is_empty() {
            profiles.push(("default".into(), None, None));
        }
        let p = profiles.last_mut()?;
        match k.trim() {
            "aws_access_key_id" => p.1 = Some(v.trim().to_owned()),
            "aws_secret_access_key" => p.2 = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    let pick = profiles
        .iter()
        .find(|p| p.0 == "default")
        .or(profiles.first())?;
    Some((pick.1.clone()?, pick.2.clone()?))
}

/// The password in a `postgres://user:password@host/…` URL, percent-decoded.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = &rest[..rest.rfind('@')?];
    let encoded = userinfo.split_once(':')?.1;
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&encoded[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Makes sure the WAL of every moment up to now is archived, so that a restore to any of
/// them can get there: a transaction that commits now (recovery to a target time stops at
/// the first commit after it, and must see one), a switch to a new WAL segment, and a wait
/// until the archiver has the segment holding both. Needs a superuser's connection.
pub async fn seal(
    conn: &mut sqlx::PgConnection,
    within: std::time::Duration,
) -> Result<(), PitrError> {
    let sql = |e: sqlx::Error| PitrError::Io(format!("sealing the WAL: {e}"));
    sqlx::query("SELECT txid_current()")
        .execute(&mut *conn)
        .await
        .map_err(sql)?;
    let (segment,): (String,) = sqlx::query_as("SELECT pg_walfile_name(pg_switch_wal())")
        .fetch_one(&mut *conn)
        .await
        .map_err(sql)?;
    let deadline = std::time::Instant::now() + within;
    loop {
        let (archived, failed): (Option<String>, Option<String>) =
            sqlx::query_as("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver")
                .fetch_one(&mut *conn)
                .await
                .map_err(sql)?;
        // Segment names sort in WAL order within a timeline.
        if archived.as_deref().is_some_and(|a| a >= segment.as_str()) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(PitrError::Unreachable(format!(
                "WAL segment {segment} was not archived within {} s (last failed: {})",
                within.as_secs(),
                failed.unwrap_or_else(|| "none".into())
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A base backup in the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackup {
    pub label: String,
    /// `full`, `diff` or `incr`.
    pub kind: String,
    pub started: DateTime<Utc>,
    /// The backup is consistent from here on: the earliest moment it can restore to.
    pub stopped: DateTime<Utc>,
}

/// What the repository holds for one stanza.
#[derive(Debug, Clone, Default)]
pub struct Holdings {
    /// Oldest first.
    pub backups: Vec<BaseBackup>,
    /// The oldest and newest WAL segment archived.
    pub archive: Option<(String, String)>,
}

impl Holdings {
    /// The earliest moment a restore can reach: just after the end of the oldest backup
    /// (pgBackRest records it to the second, and picks a backup that stopped before the
    /// target).
    pub fn earliest(&self) -> Option<DateTime<Utc>> {
        self.backups
            .first()
            .map(|b| b.stopped + chrono::TimeDelta::seconds(1))
    }

    /// Refuses a target before the oldest backup ended or in the future.
    pub fn reaches(&self, target: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), PitrError> {
        if target > now {
            return Err(PitrError::Unreachable(format!(
                "{} is in the future",
                target.to_rfc3339()
            )));
        }
        match self.earliest() {
            None => Err(PitrError::Unreachable(
                "the cluster has no base backup yet".into(),
            )),
            Some(earliest) if target < earliest => Err(PitrError::Unreachable(format!(
                "{} is before the oldest backup, which reaches back to {}",
                target.to_rfc3339(),
                earliest.to_rfc3339()
            ))),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_shared_key_comes_from_the_default_profile_else_the_first() {
        let file = "[ops]\naws_access_key_id = A1\naws_secret_access_key = S1\n\
                    [default]\naws_access_key_id=A2\naws_secret_access_key=S2\n";
        assert_eq!(shared_key(file), Some(("A2".into(), "S2".into())));
        let file = "[ops]\naws_access_key_id = A1\naws_secret_access_key = S1\n";
        assert_eq!(shared_key(file), Some(("A1".into(), "S1".into())));
        assert_eq!(shared_key("[x]\naws_access_key_id = A1\n"), None);
    }

    #[test]
    fn passwords_come_from_the_admin_url() {
        assert_eq!(
            url_password("postgres://postgres:s3cr%40t@127.0.0.1:5432/postgres").as_deref(),
            Some("s3cr@t")
        );
        assert_eq!(url_password("postgres://postgres@host/db"), None);
        assert_eq!(
            url_password("postgres://u:p%2@h/db").as_deref(),
            Some("p%2"),
            "a stray % is kept"
        );
    }

    #[test]
    fn a_target_must_be_after_the_oldest_backup_and_not_in_the_future() {
        let at = |h| Utc.with_ymd_and_hms(2026, 12, 1, h, 0, 0).unwrap();
        let h = Holdings {
            backups: vec![BaseBackup {
                label: "20261201-100000F".into(),
                kind: "full".into(),
                started: at(9),
                stopped: at(10),
            }],
            archive: None,
        };
        assert!(h.reaches(at(11), at(12)).is_ok());
        assert!(h.reaches(at(10), at(12)).is_err());
        assert!(
            h.reaches(at(9), at(12))
                .unwrap_err()
                .to_string()
                .contains("before the oldest")
        );
        assert!(
            h.reaches(at(13), at(12))
                .unwrap_err()
                .to_string()
                .contains("future")
        );
        assert!(Holdings::default().reaches(at(11), at(12)).is_err());
    }
}
