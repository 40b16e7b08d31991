//! tenantd as a real child process (crash and replica tests), and its configuration file.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tenantd::config::Config;

/// tenantd as a child process on `port`, with the given failpoints.
pub struct Process {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `config` as TOML for `tenantd serve`, listening on `port`.
pub fn write_config(config: &Config, dir: &std::path::Path, port: u16) -> PathBuf {
    let mut config = config.clone();
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let path = dir.join(format!("tenantd-{port}.toml"));
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    path
}

impl Process {
    pub fn spawn(config: &Config, dir: &std::path::Path, failpoints: &str) -> Process {
        Self::spawn_env(config, dir, failpoints, &[])
    }

    /// [`Process::spawn`] with more environment variables (`TENANTD_LOG_FORMAT`, `OTEL_*`);
    /// the log is in [`Process::log`].
    pub fn spawn_env(
        config: &Config,
        dir: &std::path::Path,
        failpoints: &str,
        env: &[(&str, &str)],
    ) -> Process {
        let port = free_port();
        let path = write_config(config, dir, port);
        let log_path = dir.join(format!("tenantd-{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tenantd"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("TENANTD_FAILPOINTS", failpoints)
            .envs(env.iter().copied())
            .env("TENANTD_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn tenantd");
        Process {
            child,
            addr: format!("http://127.0.0.1:{port}"),
            log: log_path,
        }
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
