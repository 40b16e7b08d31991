//! pgBackRest, driven through its command line: one configuration file that tenantd writes
//! (one stanza per cluster, named after the cluster), and the commands `stanza-create`,
//! `check`, `backup`, `info --output=json` and `restore --type=time`. Commands run as the
//! owner of the data directories (the `postgres` user when tenantd runs as root on the
//! embedded cluster); the superuser password reaches libpq through `PGPASSWORD`, never the
//! command line or the configuration file.

use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;

use super::{BaseBackup, Holdings, PitrError};

/// The configuration file's name in the work directory.
pub const CONFIG_FILE: &str = "pgbackrest.conf";

/// One cluster pgBackRest backs up: its stanza.
#[derive(Clone)]
pub struct Stanza {
    /// The cluster's name in tenantd's configuration.
    pub name: String,
    /// The data directory, as pgBackRest (on this host) sees it.
    pub pg_path: PathBuf,
    pub pg_port: u16,
    /// The directory holding the server's Unix socket.
    pub pg_socket: PathBuf,
    /// The superuser's password, for `backup` and `check` (which connect).
    pub password: String,
}

impl std::fmt::Debug for Stanza {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stanza")
            .field("name", &self.name)
            .field("pg_path", &self.pg_path)
            .field("pg_port", &self.pg_port)
            .finish_non_exhaustive()
    }
}

/// Where backups and archived WAL go, and how long they stay.
#[derive(Debug, Clone)]
pub struct Repository {
    /// A local (or mounted) directory; with `s3`, the path in the bucket.
    pub path: PathBuf,
    /// Full backups kept (pgBackRest's `repo1-retention-full`); WAL older than the oldest
    /// kept backup expires with it.
    pub retention_full: u32,
    /// The repository is in this bucket.
    pub s3: Option<S3Repository>,
}

/// A repository in an S3 (or S3-compatible) bucket.
#[derive(Clone)]
pub struct S3Repository {
    pub bucket: String,
    pub region: String,
    /// Default: `s3.<region>.amazonaws.com`.
    pub endpoint: Option<String>,
    pub port: Option<u16>,
    pub path_style: bool,
    pub verify_tls: bool,
    pub ca_file: Option<PathBuf>,
    pub key: S3Key,
}

/// Where pgBackRest's S3 key comes from.
#[derive(Clone)]
pub enum S3Key {
    /// The instance's role.
    Auto,
    /// A web identity token (EKS).
    WebId,
    Shared {
        key_id: String,
        secret: String,
    },
}

impl std::fmt::Debug for S3Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("S3Repository")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Repository {
    /// pgBackRest's `repo1-*` options.
    fn options(&self) -> Vec<(&'static str, String)> {
        let mut o = vec![
            ("repo1-path", self.path.display().to_string()),
            (
                "repo1-retention-full",
                self.retention_full.max(1).to_string(),
            ),
        ];
        let Some(s3) = &self.s3 else {
            return o;
        };
        o.push(("repo1-type", "s3".into()));
        o.push(("repo1-s3-bucket", s3.bucket.clone()));
        o.push(("repo1-s3-region", s3.region.clone()));
        let endpoint = s3
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("s3.{}.amazonaws.com", s3.region));
        o.push(("repo1-s3-endpoint", endpoint));
        if let Some(port) = s3.port {
            o.push(("repo1-storage-port", port.to_string()));
        }
        if s3.path_style {
            o.push(("repo1-s3-uri-style", "path".into()));
        }
        if !s3.verify_tls {
            o.push(("repo1-storage-verify-tls", "n".into()));
        }
        if let Some(ca) = &s3.ca_file {
            o.push(("repo1-storage-ca-file", ca.display().to_string()));
        }
        match &s3.key {
            S3Key::Auto => o.push(("repo1-s3-key-type", "auto".into())),
            S3Key::WebId => o.push(("repo1-s3-key-type", "web-id".into())),
            S3Key::Shared { key_id, secret } => {
                o.push(("repo1-s3-key-type", "shared".into()));
                o.push(("repo1-s3-key", key_id.clone()));
                o.push(("repo1-s3-key-secret", secret.clone()));
            }
        }
        o
    }
}

/// pgBackRest for a set of stanzas sharing one repository.
#[derive(Debug, Clone)]
pub struct PgBackRest {
    config_file: PathBuf,
    stanzas: Vec<Stanza>,
}

impl PgBackRest {
    /// Writes the configuration under `work_dir` (with pgBackRest's log, lock and spool
    /// directories), owned by the data directories' owner.
    pub fn configure(
        work_dir: &Path,
        repo: &Repository,
        stanzas: Vec<Stanza>,
    ) -> Result<Self, PitrError> {
        which()?;
        let io = |e: std::io::Error| PitrError::Io(format!("pgbackrest work dir: {e}"));
        for sub in ["log", "lock", "spool"] {
            std::fs::create_dir_all(work_dir.join(sub)).map_err(io)?;
        }
        if repo.s3.is_none() {
            std::fs::create_dir_all(&repo.path).map_err(io)?;
        }
        let mut text = String::from(
            "# Written by tenantd (docs/pitr.md); changes are overwritten at start.\n[global]\n",
        );
        let global = [
            ("log-path", work_dir.join("log").display().to_string()),
            ("lock-path", work_dir.join("lock").display().to_string()),
            ("spool-path", work_dir.join("spool").display().to_string()),
            ("compress-type", "zst".into()),
            ("start-fast", "y".into()),
            ("log-level-console", "warn".into()),
            ("log-level-file", "info".into()),
        ];
        for (k, v) in repo.options().into_iter().chain(global) {
            text.push_str(&option_line(k, &v)?);
        }
        for s in &stanzas {
            if !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(PitrError::Io(format!("stanza name {:?}", s.name)));
            }
            text.push_str(&format!("\n[{}]\n", s.name));
            for (k, v) in [
                ("pg1-path", s.pg_path.display().to_string()),
                ("pg1-port", s.pg_port.to_string()),
                ("pg1-socket-path", s.pg_socket.display().to_string()),
                ("pg1-user", "postgres".into()),
            ] {
                text.push_str(&option_line(k, &v)?);
            }
        }
        let config_file = work_dir.join(CONFIG_FILE);
        let holds_key = repo
            .s3
            .as_ref()
            .is_some_and(|s| matches!(s.key, S3Key::Shared { .. }));
        if holds_key {
            // Readable by its owner (the servers' archive_command reads it) only.
            use std::io::Write;
            let mut f = crate::secret_file::open_new(&config_file).map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
        } else {
            std::fs::write(&config_file, text).map_err(io)?;
        }
        // What tenantd made; what pgBackRest writes below is its owner's already (walking a
        // repository of years of WAL at every start would take long).
        let made = [
            work_dir.to_owned(),
            work_dir.join("log"),
            work_dir.join("lock"),
            work_dir.join("spool"),
            config_file.clone(),
        ];
        let repo_dir = repo.s3.is_none().then(|| repo.path.clone());
        for path in made.iter().chain(repo_dir.as_ref()) {
            crate::embedded::give_to_cluster_owner(path)
                .map_err(|e| PitrError::Io(e.to_string()))?;
        }
        Ok(PgBackRest {
            config_file,
            stanzas,
        })
    }

    /// Whether `name` is one of the stanzas configured.
    pub fn has_stanza(&self, name: &str) -> bool {
        self.stanzas.iter().any(|s| s.name == name)
    }

    /// The superuser password of the stanza's cluster (a restored copy keeps its source's
    /// roles).
    pub fn password(&self, stanza: &str) -> Result<&str, PitrError> {
        Ok(&self.stanza(stanza)?.password)
    }

    fn stanza(&self, name: &str) -> Result<&Stanza, PitrError> {
        self.stanzas
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| PitrError::Io(format!("no pgBackRest stanza for cluster {name:?}")))
    }

    /// The `archive_command` the stanza's cluster must run.
    pub fn archive_command(&self, stanza: &str) -> String {
        archive_command_for(&self.config_file, stanza)
    }

    /// Runs `pgbackrest <command>` for the stanza: its output, or what it printed on failure.
    async fn run(&self, stanza: &str, command: &str, args: &[String]) -> Result<String, PitrError> {
        let s = self.stanza(stanza)?;
        let mut cmd = std::process::Command::new("pgbackrest");
        cmd.arg(format!("--config={}", self.config_file.display()))
            .arg(format!("--stanza={stanza}"))
            .args(args)
            .arg(command)
            .stdin(std::process::Stdio::null());
        crate::embedded::as_cluster_owner(&mut cmd).map_err(|e| PitrError::Io(e.to_string()))?;
        // After the owner's environment, which drops any PGPASSWORD of ours.
        cmd.env("PGPASSWORD", &s.password);
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .map_err(|e| PitrError::Command {
                command: command.into(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            let detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            let detail = if detail.is_empty() {
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            } else {
                detail
            };
            return Err(PitrError::Command {
                command: command.into(),
                detail,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates the stanza in the repository (idempotent), then checks that the cluster's
    /// archiving reaches it.
    pub async fn ensure_stanza(&self, stanza: &str) -> Result<(), PitrError> {
        self.run(stanza, "stanza-create", &[]).await?;
        self.run(stanza, "check", &[]).await?;
        Ok(())
    }

    /// Takes a base backup (`full`, else incremental on the newest one); pgBackRest expires
    /// what retention no longer keeps at its end.
    pub async fn backup(&self, stanza: &str, full: bool) -> Result<(), PitrError> {
        let kind = if full { "--type=full" } else { "--type=incr" };
        self.run(stanza, "backup", &[kind.into()]).await?;
        Ok(())
    }

    /// What the repository holds for the stanza.
    pub async fn holdings(&self, stanza: &str) -> Result<Holdings, PitrError> {
        let out = self.run(stanza, "info", &["--output=json".into()]).await?;
        parse_info(&out)
    }

    /// Restores the stanza's cluster as it was at `target` into `into` (an empty directory
    /// the data directories' owner can write), set to pause when it gets there and never to
    /// archive. `databases`: restore only these (and the system databases), for a tenant
    /// with a database of its own.
    pub async fn restore(
        &self,
        stanza: &str,
        target: DateTime<Utc>,
        into: &Path,
        databases: &[String],
    ) -> Result<(), PitrError> {
        let mut args = vec![
            format!("--pg1-path={}", into.display()),
            "--type=time".into(),
            // The form pgBackRest (and recovery_target_time) reads, in UTC.
            format!("--target={}", target.format("%Y-%m-%d %H:%M:%S%.6f+00")),
            "--target-action=pause".into(),
            "--archive-mode=off".into(),
        ];
        args.extend(databases.iter().map(|d| format!("--db-include={d}")));
        self.run(stanza, "restore", &args).await?;
        Ok(())
    }
}

/// `key=value` for pgBackRest's configuration; a value that would end the line is refused
/// (it could smuggle in another option).
fn option_line(key: &str, value: &str) -> Result<String, PitrError> {
    if value.contains(['\n', '\r']) {
        return Err(PitrError::Io(format!(
            "pgBackRest option {key}: a value must not hold a line break"
        )));
    }
    Ok(format!("{key}={value}\n"))
}

/// The `archive_command` for `stanza` with the configuration at `config_file` (known before
/// the cluster starts: the file is written once it runs).
pub fn archive_command_for(config_file: &Path, stanza: &str) -> String {
    format!(
        "pgbackrest --config={} --stanza={stanza} archive-push %p",
        config_file.display()
    )
}

/// Whether pgBackRest is installed (on PATH).
pub fn installed() -> bool {
    which().is_ok()
}

fn which() -> Result<(), PitrError> {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("pgbackrest").is_file())
    });
    if found {
        Ok(())
    } else {
        Err(PitrError::NotInstalled)
    }
}

#[derive(Deserialize)]
struct InfoStanza {
    #[serde(default)]
    backup: Vec<InfoBackup>,
    #[serde(default)]
    archive: Vec<InfoArchive>,
}

#[derive(Deserialize)]
struct InfoBackup {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    timestamp: InfoTimestamp,
    #[serde(default)]
    error: bool,
}

#[derive(Deserialize)]
struct InfoTimestamp {
    start: i64,
    stop: i64,
}

#[derive(Deserialize)]
struct InfoArchive {
    min: Option<String>,
    max: Option<String>,
}

fn parse_info(json: &str) -> Result<Holdings, PitrError> {
    let stanzas: Vec<InfoStanza> =
        serde_json::from_str(json).map_err(|e| PitrError::Info(e.to_string()))?;
    let Some(s) = stanzas.into_iter().next() else {
        return Ok(Holdings::default());
    };
    let at = |t: i64| {
        Utc.timestamp_opt(t, 0)
            .single()
            .ok_or_else(|| PitrError::Info(format!("bad timestamp {t}")))
    };
    let mut backups = Vec::new();
    for b in s.backup.into_iter().filter(|b| !b.error) {
        backups.push(BaseBackup {
            label: b.label,
            kind: b.kind,
            started: at(b.timestamp.start)?,
            stopped: at(b.timestamp.stop)?,
        });
    }
    backups.sort_by_key(|b| b.stopped);
    let archive = s.archive.into_iter().find_map(|a| a.min.zip(a.max));
    Ok(Holdings { backups, archive })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_lists_the_backups_oldest_first_and_the_archive() {
        let json = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000003","min":"000000010000000000000001"}],"backup":[{"label":"20261202-141937F","type":"full","error":false,"timestamp":{"start":1796221177,"stop":1796221183}}],"name":"main"}]"#;
        let h = parse_info(json).unwrap();
        assert_eq!(h.backups.len(), 1);
        assert_eq!(h.backups[0].kind, "full");
        assert_eq!(h.backups[0].stopped.timestamp(), 1796221183);
        assert_eq!(
            h.archive,
            Some((
                "000000010000000000000001".into(),
                "000000010000000000000003".into()
            ))
        );
        assert!(parse_info("[]").unwrap().backups.is_empty());
    }
}
