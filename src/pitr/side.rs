//! A side cluster: a stanza's cluster restored into a private directory as it was at a
//! target time, started from the installed binaries listening only on a socket in a private
//! directory (never on TCP), with archiving off, paused when recovery reaches the target.
//! Dropping it stops the server and removes the directory, so no copy of a cluster outlives
//! its use.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::PitrError;
use super::pgbackrest::PgBackRest;
use crate::embedded::{EmbeddedOptions, EmbeddedPostgres};

pub struct SideCluster {
    server: Option<EmbeddedPostgres>,
    dir: PathBuf,
}

impl SideCluster {
    /// Restores `stanza` at `target` into `dir` (which must not exist: a leftover of a
    /// crashed run is removed first), starts it and waits until recovery paused at the
    /// target. `password` is the source's superuser password (the copy keeps its roles).
    pub async fn restore(
        pgbackrest: &PgBackRest,
        stanza: &str,
        target: DateTime<Utc>,
        dir: &Path,
        databases: &[String],
        password: &str,
    ) -> Result<SideCluster, PitrError> {
        remove(dir)?;
        let io = |e: std::io::Error| PitrError::Io(format!("side cluster directory: {e}"));
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data).map_err(io)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(io)?;
        for p in [dir, data.as_path()] {
            crate::embedded::give_to_cluster_owner(p).map_err(|e| PitrError::Io(e.to_string()))?;
        }
        // Whatever happens next, the directory goes with this value.
        let mut side = SideCluster {
            server: None,
            dir: dir.to_owned(),
        };
        pgbackrest.restore(stanza, target, &data, databases).await?;
        let opts = EmbeddedOptions {
            state_dir: dir.to_owned(),
            socket_only: true,
            password: Some(password.to_owned()),
            settings: vec![
                ("archive_mode".into(), "off".into()),
                ("hot_standby".into(), "on".into()),
            ],
            ..Default::default()
        };
        let server = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts))
            .await
            .map_err(|e| PitrError::Side(e.to_string()))?
            .map_err(|e| PitrError::Side(e.to_string()))?;
        side.server = Some(server);
        side.wait_paused().await?;
        Ok(side)
    }

    /// The superuser's URL over the private socket.
    pub fn url(&self, database: &str) -> String {
        self.server
            .as_ref()
            .expect("a started side cluster")
            .socket_url(database)
    }

    /// Waits until recovery paused at the target. Recovery that ends before the target
    /// (WAL missing) stops the server: that is an error naming the log's reason.
    async fn wait_paused(&self) -> Result<(), PitrError> {
        let url = self.url("postgres");
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let state: Result<(bool, String), sqlx::Error> = async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::query_as(
                    "SELECT pg_is_in_recovery(), \
                     CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() \
                     ELSE 'not in recovery' END",
                )
                .fetch_one(&mut conn)
                .await
            }
            .await;
            match state {
                Ok((true, s)) if s == "paused" => return Ok(()),
                Ok((false, _)) => {
                    return Err(PitrError::Side(
                        "the restored copy left recovery instead of pausing at the target".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) if Instant::now() > deadline => {
                    return Err(PitrError::Side(format!("not paused after 10 minutes: {e}")));
                }
                Err(_) => {}
            }
            if let Some(reason) = self.stopped_because() {
                return Err(PitrError::Unreachable(reason));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Why the server stopped, from its log, if it did.
    fn stopped_because(&self) -> Option<String> {
        let log = std::fs::read_to_string(self.dir.join("postgres.log")).ok()?;
        log.lines()
            .find(|l| l.contains("FATAL:"))
            .map(|l| l.split("FATAL:").nth(1).unwrap_or(l).trim().to_owned())
    }
}

impl Drop for SideCluster {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
        if let Err(e) = remove(&self.dir) {
            tracing::warn!(error = %e, dir = %self.dir.display(), "side cluster directory left");
        }
    }
}

fn remove(dir: &Path) -> Result<(), PitrError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PitrError::Io(format!("removing {}: {e}", dir.display()))),
    }
}
