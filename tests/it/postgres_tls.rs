//! TLS to PostgreSQL (docs/security.md, "TLS"): registry and data-plane URLs with
//! `sslmode=verify-full` connect only to a server whose certificate chains to `sslrootcert`
//! and names the host, and everything tenantd does then runs over TLS.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use tenantd::api::pb;
use tenantd::config::ClusterConfig;
use tenantd::embedded::{EmbeddedOptions, EmbeddedPostgres};
use tenantd::registry::Registry;
use tenantd::sql::Ident;

use crate::harness::TestEnv;

/// A cluster of its own with `ssl = on`, its certificate (for `localhost`) signed by a CA
/// written to `ca.crt` in `dir`; and a CA that signed nothing of it, in `other-ca.crt`.
struct TlsCluster {
    pg: EmbeddedPostgres,
    password: String,
    ca: PathBuf,
    other_ca: PathBuf,
}

impl TlsCluster {
    async fn start(dir: &Path) -> TlsCluster {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let pg = EmbeddedPostgres::start(&EmbeddedOptions {
            state_dir: dir.join("pg"),
            port: 0,
            ephemeral: true,
            ..Default::default()
        })
        .unwrap();
        let plain = pg.url("postgres");
        let password = plain
            .strip_prefix("postgres://postgres:")
            .and_then(|r| r.split_once('@'))
            .unwrap()
            .0
            .to_owned();
        let ca_params = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, cn);
            p
        };
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params("test postgres CA").self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params("test postgres CA"), ca_key);
        let other_key = KeyPair::generate().unwrap();
        let other_cert = ca_params("another CA").self_signed(&other_key).unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

        // The server's files, owned by the server's user and private, in its data directory.
        let mut admin = sqlx::PgConnection::connect(&plain).await.unwrap();
        let (data,): (String,) = sqlx::query_as("SHOW data_directory")
            .fetch_one(&mut admin)
            .await
            .unwrap();
        let data = PathBuf::from(data);
        let owner = std::fs::metadata(&data).unwrap();
        for (name, pem) in [
            ("server.crt", leaf_cert.pem()),
            ("server.key", leaf_key.serialize_pem()),
        ] {
            let path = data.join(name);
            std::fs::write(&path, pem).unwrap();
            std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        }
        sqlx::query("ALTER SYSTEM SET ssl = on")
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut admin)
            .await
            .unwrap();
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        let other_ca = dir.join("other-ca.crt");
        std::fs::write(&other_ca, other_cert.pem()).unwrap();
        let cluster = TlsCluster {
            pg,
            password,
            ca,
            other_ca,
        };
        // The reload is asynchronous: wait until a verified connection succeeds.
        let url = cluster.url("localhost", "postgres", &cluster.ca);
        for _ in 0..100 {
            if sqlx::PgConnection::connect(&url).await.is_ok() {
                return cluster;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the server did not turn TLS on");
    }

    fn url(&self, host: &str, db: &str, ca: &Path) -> String {
        format!(
            "postgres://postgres:{}@{host}:{}/{db}?sslmode=verify-full&sslrootcert={}",
            self.password,
            self.pg.port,
            ca.display()
        )
    }
}

use sqlx::Connection as _;

#[tokio::test]
async fn verify_full_connects_only_to_the_certified_host_and_tenantd_runs_over_it() {
    let dir = std::env::temp_dir().join(format!("tenantd-tls-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let tls = TlsCluster::start(&dir).await;

    // The right CA and the certified name: connected, encrypted.
    let registry = Registry::connect(&tls.url("localhost", "postgres", &tls.ca))
        .await
        .expect("verify-full with the server's CA connects");
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(registry.pool())
            .await
            .unwrap();
    assert!(ssl, "the session is encrypted");
    // Another CA: refused. A host the certificate does not name: refused.
    for (url, why) in [
        (
            tls.url("localhost", "postgres", &tls.other_ca),
            "another CA",
        ),
        (
            tls.url("127.0.0.1", "postgres", &tls.ca),
            "a name not certified",
        ),
    ] {
        let refused = Registry::connect(&url).await;
        assert!(refused.is_err(), "{why}: connected");
        let message = refused.err().unwrap().to_string();
        assert!(
            !message.contains(&tls.password),
            "the password stays out of errors: {message}"
        );
    }

    // tenantd with its registry and its one cluster behind verify-full: a tenant is
    // provisioned, and every session tenantd holds is encrypted.
    let db = Ident::new(format!("reg_{}", Uuid::new_v4().simple())).unwrap();
    Registry::create_database_if_missing(&tls.url("localhost", "postgres", &tls.ca), &db)
        .await
        .unwrap();
    let (mut config, test_dir) = TestEnv::config().await;
    config.registry_url = tls.url("localhost", db.as_str(), &tls.ca);
    config.clusters = vec![ClusterConfig {
        name: "main".into(),
        admin_url: tls.url("localhost", "postgres", &tls.ca),
        public_host: None,
        public_port: None,
        shared_database: "tenants".into(),
    }];
    let mut env = TestEnv::start_with(config, test_dir).await;
    let t = env.provision("over-tls", pb::Tier::Pool, "main").await;
    assert_eq!(t.state, pb::TenantState::Active as i32);
    let (plain,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.application_name = 'tenantd' AND NOT s.ssl",
    )
    .fetch_one(registry.pool())
    .await
    .unwrap();
    let (encrypted,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.application_name = 'tenantd' AND s.ssl",
    )
    .fetch_one(registry.pool())
    .await
    .unwrap();
    assert_eq!(plain, 0, "no tenantd session in clear");
    assert!(encrypted > 1, "{encrypted} encrypted tenantd sessions");
    drop(env);
    tls.pg.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
