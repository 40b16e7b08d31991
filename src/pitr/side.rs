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
    /// Stop the server but leave the directory (for a workflow's next step).
    keep: bool,
}

/// Where the copy's data directory goes under `dir` (the server user must reach it: see
/// [`crate::embedded::server_files_dir`]).
fn data_dir(dir: &Path) -> Result<PathBuf, PitrError> {
    let server =
        crate::embedded::server_files_dir(dir).map_err(|e| PitrError::Io(e.to_string()))?;
    Ok(server.join("pgdata"))
}

impl SideCluster {
    /// Restores `stanza` at `target` into `dir`, starts it and waits until recovery paused
    /// at the target: [`SideCluster::fetch`] then [`SideCluster::start`].
    pub async fn restore(
        pgbackrest: &PgBackRest,
        stanza: &str,
        target: DateTime<Utc>,
        dir: &Path,
        databases: &[String],
        password: &str,
    ) -> Result<SideCluster, PitrError> {
        let fetched = Self::fetch(pgbackrest, stanza, target, dir, databases).await;
        if let Err(e) = fetched {
            let _ = remove(dir).await;
            return Err(e);
        }
        Self::start(dir, password, Vec::new()).await
    }

    /// Restores the files of `stanza`'s cluster as it was at `target` into `dir`, set to
    /// pause there (what a crashed attempt left is stopped and removed first).
    /// `databases`: only these (and the system databases).
    pub async fn fetch(
        pgbackrest: &PgBackRest,
        stanza: &str,
        target: DateTime<Utc>,
        dir: &Path,
        databases: &[String],
    ) -> Result<(), PitrError> {
        remove(dir).await?;
        let io = |e: std::io::Error| PitrError::Io(format!("side cluster directory: {e}"));
        std::fs::create_dir_all(dir).map_err(io)?;
        let data = data_dir(dir)?;
        std::fs::create_dir_all(&data).map_err(io)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        for p in [dir, data.as_path()] {
            crate::embedded::give_to_cluster_owner(p).map_err(|e| PitrError::Io(e.to_string()))?;
        }
        pgbackrest.restore(stanza, target, &data, databases).await
    }

    /// Starts the copy fetched into `dir` (private socket only, archiving off, hot standby)
    /// and waits until recovery paused at the target; a copy restarted after a pause replays
    /// to the same target again. `password`: the source's superuser password (the copy keeps
    /// its roles). `settings`: more server settings, such as the source's
    /// `max_connections`, which a hot standby must at least match.
    pub async fn start(
        dir: &Path,
        password: &str,
        settings: Vec<(String, String)>,
    ) -> Result<SideCluster, PitrError> {
        let data = data_dir(dir)?;
        if !data.join("PG_VERSION").exists() {
            return Err(PitrError::Side(format!(
                "{} holds no restored copy",
                dir.display()
            )));
        }
        stop_leftover(&data).await;
        // Whatever happens next, the directory goes with this value.
        let mut side = SideCluster {
            server: None,
            dir: dir.to_owned(),
            keep: false,
        };
        let hba = own_configuration(dir, &data)?;
        let mut all = vec![
            ("archive_mode".to_owned(), "off".to_owned()),
            ("hot_standby".to_owned(), "on".to_owned()),
            // Only tenantd, as the superuser over the private socket: no tenant login (the
            // copy keeps every role of its source) reaches the copy.
            ("hba_file".to_owned(), hba.display().to_string()),
            // A socket in a private directory needs no TLS, and the source's certificate
            // files need not exist here.
            ("ssl".to_owned(), "off".to_owned()),
        ];
        all.extend(settings);
        let opts = EmbeddedOptions {
            state_dir: dir.to_owned(),
            socket_only: true,
            password: Some(password.to_owned()),
            settings: all,
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

    /// Stops the server and leaves the restored directory for a later start.
    pub fn stop_and_keep(mut self) {
        self.keep = true;
    }

    /// Whether `dir` holds a copy fetched and not yet removed.
    pub fn fetched(dir: &Path) -> bool {
        dir.exists() && data_dir(dir).is_ok_and(|d| d.join("PG_VERSION").exists())
    }

    /// The last transaction replayed: when it committed.
    pub async fn replayed_to(&self) -> Result<Option<DateTime<Utc>>, PitrError> {
        use sqlx::Connection;
        let sql = |e: sqlx::Error| PitrError::Side(e.to_string());
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .map_err(sql)?;
        sqlx::query_scalar("SELECT pg_last_xact_replay_timestamp()")
            .fetch_one(&mut conn)
            .await
            .map_err(sql)
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
            if self.keep {
                server.stop();
                return;
            }
            // Its files go next: no shutdown checkpoint needed.
            server.stop_now();
        }
        if self.keep {
            return;
        }
        if let Err(e) = remove_files(&self.dir) {
            tracing::warn!(error = %e, dir = %self.dir.display(), "side cluster directory left");
        }
    }
}

/// The copy's own access rules (`side_hba.conf` beside its data directory: the superuser
/// over the socket only), and an empty
/// `postgresql.conf` when the source kept its configuration outside the data directory
/// (Debian's /etc/postgresql): settings come from the command line.
fn own_configuration(dir: &Path, data: &Path) -> Result<PathBuf, PitrError> {
    let io = |e: std::io::Error| PitrError::Io(format!("side cluster configuration: {e}"));
    let conf = data.join("postgresql.conf");
    if !conf.exists() {
        std::fs::write(&conf, "# side cluster: settings on the command line\n").map_err(io)?;
        crate::embedded::give_to_cluster_owner(&conf).map_err(|e| PitrError::Io(e.to_string()))?;
    }
    // Beside the data directory, where the server user reaches it. `md5` also takes a
    // SCRAM-hashed password (by SCRAM), for sources still storing md5 hashes.
    let hba = data.parent().unwrap_or(dir).join("side_hba.conf");
    std::fs::write(&hba, "local all postgres md5\n").map_err(io)?;
    crate::embedded::give_to_cluster_owner(&hba).map_err(|e| PitrError::Io(e.to_string()))?;
    Ok(hba)
}

/// Removes a side cluster's directory, first stopping a server a crashed process left
/// running there. Nothing there is fine.
pub async fn remove(dir: &Path) -> Result<(), PitrError> {
    if dir.exists() {
        stop_leftover(&data_dir(dir)?).await;
    }
    remove_files(dir)
}

fn remove_files(dir: &Path) -> Result<(), PitrError> {
    let server = crate::embedded::server_files_dir(dir)
        .ok()
        .filter(|s| s != dir);
    for d in std::iter::once(dir.to_owned()).chain(server) {
        match std::fs::remove_dir_all(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PitrError::Io(format!("removing {}: {e}", d.display()))),
        }
    }
    Ok(())
}

/// Stops a postmaster still running on `data` (its process outlived a crashed tenantd, or
/// is still shutting down): fast shutdown, then up to 30 s for it to go.
async fn stop_leftover(data: &Path) {
    let Some(pid) = leftover_pid(data) else {
        return;
    };
    tracing::info!(pid, data = %data.display(), "stopping a side cluster left running");
    // SAFETY: kill(2) on a pid checked to be a postgres on this data directory.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while leftover_pid(data).is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(pid) = leftover_pid(data) {
        // SAFETY: as above.
        unsafe {
            libc::kill(pid, libc::SIGQUIT);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The pid in `data`'s postmaster.pid, if that process is alive and is a postgres started
/// on `data` (not a pid reused since).
fn leftover_pid(data: &Path) -> Option<i32> {
    let pidfile = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: i32 = pidfile.lines().next()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let ours = cmdline.contains("postgres") && cmdline.contains(&*data.to_string_lossy());
    ours.then_some(pid)
}
