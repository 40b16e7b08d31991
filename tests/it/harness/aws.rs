//! The AWS emulator (moto_server) for the KMS and S3 tests, and settings that point at it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tenantd::config::AwsConfig;

use super::free_port;

/// A moto_server (AWS emulator) for the test run, on loopback, stopped with the test process.
/// The command is `$TENANTD_MOTO_SERVER`, else the pinned one scripts/setup installs into
/// `target/moto`, else `moto_server` from the PATH.
pub fn moto() -> &'static str {
    static MOTO: OnceLock<String> = OnceLock::new();
    MOTO.get_or_init(|| start_moto(false))
}

/// A second moto for the run, over HTTPS with a self-signed certificate
/// (`harness/moto_tls.py`): pgBackRest reaches S3 only by TLS. Its `https://…` address.
pub fn moto_tls() -> &'static str {
    static MOTO: OnceLock<String> = OnceLock::new();
    MOTO.get_or_init(|| start_moto(true))
}

fn start_moto(tls: bool) -> String {
    use std::os::unix::process::CommandExt;
    let port = free_port();
    let pinned = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/moto");
    let (program, pythonpath) = match std::env::var("TENANTD_MOTO_SERVER") {
        Ok(p) => (p, None),
        Err(_) if pinned.join("bin/moto_server").exists() => (
            pinned.join("bin/moto_server").display().to_string(),
            Some(pinned.clone()),
        ),
        Err(_) => ("moto_server".to_owned(), None),
    };
    let mut cmd = if tls {
        let dir = std::env::temp_dir().join(format!("tenantd-it-{}-moto", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl runs");
        assert!(made.status.success(), "openssl: {made:?}");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/harness/moto_tls.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args(["127.0.0.1", &port.to_string()])
            .arg(cert)
            .arg(key);
        cmd
    } else {
        let mut cmd = Command::new(&program);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        cmd
    };
    if let Some(dir) = pythonpath {
        cmd.env("PYTHONPATH", dir);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe; runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The spawning thread must outlive the child (PDEATHSIG follows the thread), so a
    // thread of its own spawns it and waits for it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || match cmd.spawn() {
        Ok(mut child) => {
            let _ = tx.send(Ok(()));
            let _ = child.wait();
        }
        Err(e) => {
            let _ = tx.send(Err(e));
        }
    });
    rx.recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot start {program} (run scripts/setup): {e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://127.0.0.1:{port}")
}

/// AWS settings pointing at moto, with a throwaway credentials file in `dir`.
pub fn aws_config(dir: &std::path::Path) -> AwsConfig {
    let credentials = dir.join("aws-credentials");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .unwrap();
    AwsConfig {
        region: Some("us-east-1".into()),
        endpoint_url: Some(moto().to_owned()),
        profile: None,
        credentials_file: Some(credentials),
    }
}

pub async fn create_bucket(aws: &AwsConfig, bucket: &str) {
    let sdk = tenantd::aws::sdk_config(aws).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket(bucket).send().await.unwrap();
}
