//! Embedded PostgreSQL: a private cluster started from the installed server binaries, for
//! `tenantd dev` and for the test harness. No download, no sudo.
//!
//! Layout under the state directory: `pgdata/` (the cluster, owned by the server user),
//! `superuser.password` (mode 0600), `socket/` (private socket dir) and `postgres.log`. When
//! the server user cannot reach the state directory, the server's files move to /var/tmp
//! (see [`server_dir`]).
//!
//! When run as root the server runs as the `postgres` user, because initdb and postgres refuse
//! root. The server is spawned from a dedicated thread that lives exactly as long as the server
//! and asks the kernel to stop it (SIGINT, fast shutdown) if this process dies, so a crashed
//! service or test run never leaves an orphan cluster behind.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::Rng;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries not found (looked in $TENANTD_PG_BIN and /usr/lib/postgresql/*/bin): \
         install the Debian package postgresql (apt-get install postgresql) or set TENANTD_PG_BIN"
    )]
    BinariesMissing,
    #[error(
        "running as root needs a 'postgres' system user to own the cluster (install the postgresql package)"
    )]
    NoServerUser,
    #[error("{step} failed: {detail}")]
    Failed { step: &'static str, detail: String },
}

fn failed(step: &'static str, detail: impl std::fmt::Display) -> EmbeddedError {
    EmbeddedError::Failed {
        step,
        detail: detail.to_string(),
    }
}

#[derive(Debug, Clone, Default)]
pub struct EmbeddedOptions {
    pub state_dir: PathBuf,
    /// 0 picks a free port.
    pub port: u16,
    /// Trade durability for speed (fsync off): for throwaway test clusters only.
    pub ephemeral: bool,
    /// More server settings (`-c name=value`), e.g. WAL archiving.
    pub settings: Vec<(String, String)>,
    /// Listen only on the private socket directory, not on loopback TCP: a side cluster
    /// restored from a backup, reachable by tenantd alone.
    pub socket_only: bool,
    /// The superuser's password when the data directory already has one (a cluster restored
    /// from a backup keeps its source's roles): nothing is written to the state dir.
    pub password: Option<String>,
}

/// A running embedded cluster. Dropping it stops the server.
pub struct EmbeddedPostgres {
    pub port: u16,
    password: String,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    pid: i32,
    /// Signalled by the server thread when postgres exits (a Mutex keeps the type Sync).
    exited: std::sync::Mutex<mpsc::Receiver<()>>,
}

struct ServerUser {
    uid: u32,
    gid: u32,
}

impl EmbeddedPostgres {
    /// Initialises the cluster if needed, starts it and waits until it accepts connections.
    pub fn start(opts: &EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let bin = find_binaries()?;
        let user = server_user()?;
        std::fs::create_dir_all(&opts.state_dir).map_err(|e| failed("create state dir", e))?;
        let state_dir =
            std::fs::canonicalize(&opts.state_dir).map_err(|e| failed("state dir", e))?;
        let server_dir = server_dir(&state_dir, user.is_some())?;
        let data_dir = server_dir.join("pgdata");
        let socket_dir = server_dir.join("socket");
        let password = match &opts.password {
            Some(p) => p.clone(),
            None => superuser_password(&state_dir)?,
        };
        std::fs::create_dir_all(&socket_dir).map_err(|e| failed("create socket dir", e))?;
        chown(&socket_dir, user.as_ref())?;
        if !data_dir.join("PG_VERSION").exists() {
            init_cluster(&bin, &data_dir, &server_dir, &password, user.as_ref())?;
        }
        let port = if opts.port == 0 {
            free_port()?
        } else {
            opts.port
        };

        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data_dir)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&socket_dir)
            .arg("-c")
            .arg(if opts.socket_only {
                "listen_addresses="
            } else {
                "listen_addresses=127.0.0.1"
            })
            .args(["-c", "max_connections=300"])
            // Tier changes capture a tenant's writes by logical decoding while they copy
            // (dataplane::changes): one slot per move in flight.
            .args(["-c", "wal_level=logical"])
            .args(["-c", "max_replication_slots=32"])
            .args(["-c", "shared_buffers=128MB"]);
        for (name, value) in &opts.settings {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        if opts.ephemeral {
            cmd.args(["-c", "fsync=off"])
                .args(["-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"]);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(server_dir.join("postgres.log"))
            .map_err(|e| failed("open postgres.log", e))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| failed("log", e))?)
            .stderr(log);
        as_server_user(&mut cmd, user.as_ref());
        // SAFETY: prctl is async-signal-safe; it runs in the child between fork and exec,
        // after the uid change (which would otherwise clear the setting).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }

        let (pid_tx, pid_rx) = mpsc::channel();
        let (exit_tx, exit_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("embedded-postgres".into())
            .spawn(move || match cmd.spawn() {
                Ok(mut child) => {
                    let _ = pid_tx.send(Ok(child.id() as i32));
                    let _ = child.wait();
                    let _ = exit_tx.send(());
                }
                Err(e) => {
                    let _ = pid_tx.send(Err(e));
                }
            })
            .map_err(|e| failed("spawn postgres thread", e))?;
        let pid = pid_rx
            .recv()
            .map_err(|e| failed("spawn postgres", e))?
            .map_err(|e| failed("spawn postgres", e))?;

        let server = EmbeddedPostgres {
            port,
            password,
            socket_dir: socket_dir.clone(),
            data_dir: data_dir.clone(),
            pid,
            exited: std::sync::Mutex::new(exit_rx),
        };
        server.wait_ready(&server_dir)?;
        Ok(server)
    }

    fn wait_ready(&self, server_dir: &Path) -> Result<(), EmbeddedError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.exited.lock().expect("exit lock").try_recv().is_ok() {
                let log =
                    std::fs::read_to_string(server_dir.join("postgres.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(failed(
                    "start postgres",
                    format!(
                        "server exited: {}",
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    ),
                ));
            }
            // The postmaster writes "ready" as the 8th line of postmaster.pid once it accepts
            // connections ("standby" for a restored copy in recovery that accepts reads).
            if let Ok(pidfile) = std::fs::read_to_string(self.data_dir.join("postmaster.pid")) {
                let lines: Vec<&str> = pidfile.lines().collect();
                if lines.first() == Some(&self.pid.to_string().as_str())
                    && matches!(lines.get(7).map(|s| s.trim()), Some("ready" | "standby"))
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(failed("start postgres", "not ready after 60 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// URL for the superuser over TCP on loopback.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// URL for the superuser over the private socket directory.
    pub fn socket_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@localhost:{}/{database}?host={}",
            self.password,
            self.port,
            self.socket_dir.display()
        )
    }

    /// The cluster's data directory and private socket directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Fast shutdown: waits up to 30 s for the server to exit.
    pub fn stop(&self) {
        self.signal(libc::SIGINT);
    }

    /// Immediate shutdown (no checkpoint): for a copy whose files are removed next.
    pub fn stop_now(&self) {
        self.signal(libc::SIGQUIT);
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain kill(2) on the pid of our own child.
        unsafe {
            libc::kill(self.pid, signal);
        }
        let _ = self
            .exited
            .lock()
            .expect("exit lock")
            .recv_timeout(Duration::from_secs(30));
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where the server's own files go. Normally the state dir; but the server user must be able
/// to reach it, and a state dir under a private home (e.g. /root) is not reachable, so root
/// then keeps the server files under /var/tmp, in a directory named after the state dir.
fn server_dir(state_dir: &Path, switch_user: bool) -> Result<PathBuf, EmbeddedError> {
    let reachable = state_dir
        .ancestors()
        .skip(1)
        .all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if !switch_user || reachable {
        if switch_user {
            let mut perms = std::fs::metadata(state_dir)
                .map_err(|e| failed("state dir", e))?
                .permissions();
            perms.set_mode(perms.mode() | 0o711);
            std::fs::set_permissions(state_dir, perms).map_err(|e| failed("state dir", e))?;
        }
        return Ok(state_dir.to_owned());
    }
    use sha2::Digest;
    let tag = hex::encode(&sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes())[..6]);
    let dir = PathBuf::from(format!("/var/tmp/tenantd-pg-{tag}"));
    tracing::info!(
        state_dir = %state_dir.display(),
        server_dir = %dir.display(),
        "the postgres user cannot reach the state directory; keeping the cluster files elsewhere"
    );
    std::fs::create_dir_all(&dir).map_err(|e| failed("create server dir", e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| failed("server dir", e))?;
    Ok(dir)
}

fn find_binaries() -> Result<PathBuf, EmbeddedError> {
    if let Some(dir) = std::env::var_os("TENANTD_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("postgres").exists() {
            Ok(dir)
        } else {
            Err(EmbeddedError::BinariesMissing)
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| EmbeddedError::BinariesMissing)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("postgres").exists() && bin.join("initdb").exists()).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .ok_or(EmbeddedError::BinariesMissing)
}

fn server_user() -> Result<Option<ServerUser>, EmbeddedError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns a pointer into static storage or NULL; we copy the two fields
    // out immediately, before any other call could overwrite it.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(EmbeddedError::NoServerUser);
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(ServerUser { uid, gid }))
}

/// Where a cluster under `state_dir` keeps its server files (the state dir itself, or a
/// directory under /var/tmp when the server user cannot reach it): the place for files the
/// server user must reach too, such as pgBackRest's.
pub fn server_files_dir(state_dir: &Path) -> Result<PathBuf, EmbeddedError> {
    let user = server_user()?;
    std::fs::create_dir_all(state_dir).map_err(|e| failed("create state dir", e))?;
    let state_dir = std::fs::canonicalize(state_dir).map_err(|e| failed("state dir", e))?;
    server_dir(&state_dir, user.is_some())
}

/// Runs `cmd` as the user that owns the embedded clusters (`postgres` when this process is
/// root), as the tools that touch a data directory must (pgBackRest).
pub fn as_cluster_owner(cmd: &mut Command) -> Result<(), EmbeddedError> {
    let user = server_user()?;
    as_server_user(cmd, user.as_ref());
    Ok(())
}

/// Makes `path` the embedded clusters' owner's (a directory pgBackRest or a side cluster
/// writes to).
pub fn give_to_cluster_owner(path: &Path) -> Result<(), EmbeddedError> {
    let user = server_user()?;
    chown(path, user.as_ref())
}

fn as_server_user(cmd: &mut Command, user: Option<&ServerUser>) {
    if let Some(u) = user {
        // std drops supplementary groups itself when root sets a uid.
        cmd.uid(u.uid).gid(u.gid);
        cmd.env("HOME", "/tmp").env_remove("PGPASSWORD");
    }
}

fn chown(path: &Path, user: Option<&ServerUser>) -> Result<(), EmbeddedError> {
    if let Some(u) = user {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid)).map_err(|e| failed("chown", e))?;
    }
    Ok(())
}

fn superuser_password(state_dir: &Path) -> Result<String, EmbeddedError> {
    let path = state_dir.join("superuser.password");
    if let Some(p) =
        crate::secret_file::read(&path).map_err(|e| failed("read superuser.password", e))?
    {
        return Ok(String::from_utf8_lossy(&p).trim().to_owned());
    }
    let password: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    crate::secret_file::create(&path, password.as_bytes())
        .map_err(|e| failed("write superuser.password", e))?;
    Ok(password)
}

fn init_cluster(
    bin: &Path,
    data_dir: &Path,
    server_dir: &Path,
    password: &str,
    user: Option<&ServerUser>,
) -> Result<(), EmbeddedError> {
    // A half-initialised directory from an interrupted initdb is useless: start over.
    if data_dir.exists() {
        std::fs::remove_dir_all(data_dir).map_err(|e| failed("clear pgdata", e))?;
    }
    std::fs::create_dir_all(data_dir).map_err(|e| failed("create pgdata", e))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| failed("chmod pgdata", e))?;
    chown(data_dir, user)?;
    // initdb reads the superuser password from a file the server user can read; it is removed
    // right after.
    let pwfile = server_dir.join(".initdb.pw");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&pwfile)
            .map_err(|e| failed("write initdb password file", e))?;
        f.write_all(password.as_bytes())
            .map_err(|e| failed("write initdb password file", e))?;
    }
    chown(&pwfile, user)?;
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-U", "postgres", "--auth=scram-sha-256", "-E", "UTF8"])
        .args(["--locale=C.UTF-8", "--no-instructions"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdin(Stdio::null());
    as_server_user(&mut cmd, user);
    let out = cmd.output().map_err(|e| failed("run initdb", e));
    let _ = std::fs::remove_file(&pwfile);
    let out = out?;
    if !out.status.success() {
        return Err(failed(
            "initdb",
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

fn free_port() -> Result<u16, EmbeddedError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| failed("pick a port", e))?;
    Ok(l.local_addr().map_err(|e| failed("pick a port", e))?.port())
}
