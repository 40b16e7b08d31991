//! Issued credentials, used the way applications use them: IssueCredentials, then a plain
//! connection (or `psql "$uri"`) with what it returned, in every tier; what such a login can
//! and cannot reach whatever its session sets; expiry and the reaper; a tier change, a
//! deletion and a revocation ending logins; who may ask, and for which tenants.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tonic::Code;
use uuid::Uuid;

use tenantd::api::pb;
use tenantd::api::pb::tenant_service_client::TenantServiceClient;
use tenantd::auth::client::{Bearer, with_token};

use crate::harness::{
    AppConnector, TestEnv, admin, connect, eu_application_token, login, sqlstate,
};

/// The issued login roles of `tenant` that exist on `cluster`.
async fn logins_on(cluster: &str, tenant: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)")
        .bind(format!("tl_{}_", tenant.simple()))
        .fetch_one(&admin(cluster, "postgres").await)
        .await
        .unwrap()
}

async fn insert_patient(
    conn: &mut PgConnection,
    tenant: Uuid,
    mrn: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO patients (tenant_id, mrn, given_name, family_name, birth_date)
         VALUES ($1, $2, 'Ada', 'Lovelace', '1815-12-10')",
    )
    .bind(tenant)
    .bind(mrn)
    .execute(conn)
    .await
    .map(|_| ())
}

async fn patients(conn: &mut PgConnection) -> Vec<(Uuid, String)> {
    sqlx::query_as("SELECT tenant_id, mrn FROM patients ORDER BY mrn")
        .fetch_all(conn)
        .await
        .unwrap()
}

fn id(t: &pb::Tenant) -> Uuid {
    t.id.parse().unwrap()
}

#[tokio::test]
async fn an_issued_login_lands_in_its_tenant_in_every_tier() {
    let mut env = TestEnv::start().await;
    let mut apps = AppConnector::new(&env);
    for (slug, tier, cluster) in [
        ("cred-pool", pb::Tier::Pool, ""),
        ("cred-schema", pb::Tier::Schema, ""),
        ("cred-database", pb::Tier::Database, "second"),
    ] {
        let t = env.provision(slug, tier, cluster).await;
        let c = apps.credentials(id(&t), 0).await.unwrap();
        // The defaults: an hour, a login named after the tenant, the route it reaches.
        assert!(
            c.username.starts_with(&format!("tl_{}_", id(&t).simple())),
            "{slug}"
        );
        let expires = chrono::DateTime::parse_from_rfc3339(&c.expire_time).unwrap();
        let ttl = expires
            .signed_duration_since(chrono::Utc::now())
            .num_seconds();
        assert!((3590..=3600).contains(&ttl), "{slug}: {ttl}");
        let route = c.route.clone().unwrap();
        assert_eq!(
            (route.tenant_id.as_str(), route.tier),
            (t.id.as_str(), tier as i32)
        );
        assert!(!c.password.is_empty() && c.connection_uri.contains(&c.password));

        // Nothing set by the session: the login's defaults put it in the tenant.
        let mut conn = login(&c).await.unwrap();
        let (user, tenant): (String, String) =
            sqlx::query_as("SELECT session_user::text, current_setting('app.tenant_id')")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(
            (user.as_str(), tenant.as_str()),
            (c.username.as_str(), t.id.as_str())
        );
        let seeded: i64 = sqlx::query_scalar("SELECT count(*) FROM appointment_types")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(seeded, 4, "{slug}");
        insert_patient(&mut conn, id(&t), "mrn-own").await.unwrap();
        assert_eq!(patients(&mut conn).await, [(id(&t), "mrn-own".to_owned())]);

        // And so does a plain psql with the URI.
        let out = std::process::Command::new("psql")
            .args([
                c.connection_uri.as_str(),
                "-XAtc",
                "SELECT count(*) FROM patients",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{slug}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{slug}");
    }
}

#[tokio::test]
async fn a_login_reaches_only_its_tenant_whatever_the_session_sets() {
    let mut env = TestEnv::start().await;
    let mut apps = AppConnector::new(&env);
    let a = env.provision("bound-a", pb::Tier::Pool, "").await;
    let b = env.provision("bound-b", pb::Tier::Pool, "").await;
    let (a, b) = (id(&a), id(&b));
    let mut b_conn = login(&apps.credentials(b, 0).await.unwrap()).await.unwrap();
    insert_patient(&mut b_conn, b, "mrn-b").await.unwrap();

    let mut conn = login(&apps.credentials(a, 0).await.unwrap()).await.unwrap();
    insert_patient(&mut conn, a, "mrn-a").await.unwrap();
    // Naming B in every way a session can: the setting, the shared role, a reset.
    for attempt in [
        format!("SET app.tenant_id = '{b}'"),
        "SET ROLE tenantd_pool_app".to_owned(),
        "RESET app.tenant_id".to_owned(),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(attempt.clone()))
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            patients(&mut conn).await,
            [(a, "mrn-a".to_owned())],
            "{attempt}: still A's rows only"
        );
        let e = insert_patient(&mut conn, b, &format!("mrn-{}", Uuid::new_v4()))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{attempt}: {e}");
        let touched = sqlx::query("UPDATE patients SET email = 'x' WHERE tenant_id = $1")
            .bind(b)
            .execute(&mut conn)
            .await
            .unwrap()
            .rows_affected()
            + sqlx::query("DELETE FROM patients WHERE tenant_id = $1")
                .bind(b)
                .execute(&mut conn)
                .await
                .unwrap()
                .rows_affected();
        assert_eq!(touched, 0, "{attempt}");
    }
    // Only a superuser may change the session's user.
    let e = sqlx::raw_sql("SET SESSION AUTHORIZATION tenantd_pool_app")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    assert_eq!(patients(&mut b_conn).await, [(b, "mrn-b".to_owned())]);

    // In its own container a schema or database login cannot write another tenant's id.
    for (slug, tier, cluster) in [
        ("bound-schema", pb::Tier::Schema, ""),
        ("bound-database", pb::Tier::Database, "second"),
    ] {
        let t = id(&env.provision(slug, tier, cluster).await);
        let mut conn = login(&apps.credentials(t, 0).await.unwrap()).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET app.tenant_id = '{a}'")))
            .execute(&mut conn)
            .await
            .unwrap();
        let e = insert_patient(&mut conn, a, "mrn-foreign")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{slug}: {e}");
        insert_patient(&mut conn, t, "mrn-own").await.unwrap();
        assert_eq!(
            patients(&mut conn).await,
            [(t, "mrn-own".to_owned())],
            "{slug}"
        );
    }
}

#[tokio::test]
async fn expired_logins_stop_and_the_reaper_removes_every_one() {
    let mut env = TestEnv::start().await;
    let t = id(&env.provision("expiring", pb::Tier::Schema, "").await);
    let apps = AppConnector::new(&env);
    let first = apps.clone().credentials(t, 60).await.unwrap();
    let mut held = login(&first).await.unwrap();
    // A burst of 500 more, 16 at a time.
    let started = Instant::now();
    let mut burst = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let mut apps = apps.clone();
        burst.spawn(async move {
            for _ in (worker..500).step_by(16) {
                apps.credentials(t, 60).await.unwrap();
            }
        });
    }
    while let Some(done) = burst.join_next().await {
        done.unwrap();
    }
    assert_eq!(logins_on("main", t).await, 501);
    let count = |env: &TestEnv| {
        let registry = env.registry.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM issued_logins WHERE tenant_id = $1")
                .bind(t)
                .fetch_one(&registry)
                .await
                .unwrap()
        }
    };
    assert_eq!(count(&env).await, 501);

    // After the TTL the server refuses the login, and the reaper ends the held session
    // and drops every role.
    let expiry = Duration::from_secs(61).saturating_sub(started.elapsed());
    tokio::time::sleep(expiry).await;
    let e = login(&first).await.unwrap_err();
    assert_eq!(sqlstate(&e), "28P01", "{e}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while logins_on("main", t).await > 0 || count(&env).await > 0 {
        assert!(Instant::now() < deadline, "the reaper did not drop them");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        sqlx::query("SELECT 1").execute(&mut held).await.is_err(),
        "the expired login's session was ended"
    );
}

#[tokio::test]
async fn a_tier_change_fences_a_login_then_ends_it_and_a_new_one_writes() {
    // Hold the fence a while, so the application meets it.
    let mut env = TestEnv::spawn("change_tier.before_switch=sleep(1000)").await;
    let t = id(&env.provision("moving", pb::Tier::Pool, "").await);
    let mut apps = AppConnector::new(&env);
    let old = apps.credentials(t, 0).await.unwrap();
    let mut conn = login(&old).await.unwrap();
    insert_patient(&mut conn, t, "mrn-before").await.unwrap();

    let op = env
        .tenants
        .change_tier(pb::ChangeTierRequest {
            tenant: t.to_string(),
            tier: pb::Tier::Schema as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Writes hit the fence (TF001) until the switch; reads go on.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match insert_patient(&mut conn, t, &format!("mrn-{}", Uuid::new_v4())).await {
            Err(e) if sqlstate(&e) == "TF001" => break,
            Ok(()) => {
                sqlx::query("DELETE FROM patients WHERE mrn <> 'mrn-before'")
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "never fenced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(patients(&mut conn).await.len(), 1);
    let done = env.wait(&op.name).await;
    assert!(
        matches!(done.result, Some(pb::operation::Result::Tenant(_))),
        "{done:?}"
    );

    // The old login is gone with the source: its session ended, it cannot log in again,
    // and nothing of it is left on any cluster.
    assert!(sqlx::query("SELECT 1").execute(&mut conn).await.is_err());
    assert!(login(&old).await.is_err());
    assert_eq!(logins_on("main", t).await, 0);
    // A new login reaches the tenant where it lives now, with its rows.
    let new = apps.credentials(t, 0).await.unwrap();
    assert_eq!(new.route.as_ref().unwrap().tier, pb::Tier::Schema as i32);
    let mut conn = login(&new).await.unwrap();
    insert_patient(&mut conn, t, "mrn-after").await.unwrap();
    let mrns: Vec<String> = patients(&mut conn).await.into_iter().map(|p| p.1).collect();
    assert_eq!(mrns, ["mrn-after", "mrn-before"]);
}

#[tokio::test]
async fn revocation_and_deletion_end_every_login_and_refuse_new_ones() {
    // Provisioning waits before it activates, so a tenant is seen provisioning.
    let mut env = TestEnv::spawn("provision.before_activate=sleep(2000)").await;
    let mut apps = AppConnector::new(&env);
    let t = id(&env.provision("revoked", pb::Tier::Database, "second").await);
    let c = apps.credentials(t, 0).await.unwrap();
    apps.credentials(t, 0).await.unwrap();
    let mut held = login(&c).await.unwrap();
    let r = env
        .tenants
        .revoke_credentials(pb::RevokeCredentialsRequest {
            tenant: t.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revoked, 2);
    assert!(sqlx::query("SELECT 1").execute(&mut held).await.is_err());
    assert!(login(&c).await.is_err());
    assert_eq!(logins_on("second", t).await, 0);

    // Deletion drops whatever was issued since, on every cluster, and the tenant gets none.
    for _ in 0..3 {
        apps.credentials(t, 0).await.unwrap();
    }
    let op = crate::delete::delete(&mut env, crate::delete::request(&t.to_string())).await;
    crate::delete::certified(&mut env, &op).await;
    assert_eq!(logins_on("second", t).await + logins_on("main", t).await, 0);
    let e = apps.credentials(t, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // A tenant still provisioning gets none either.
    let op = env.create("unborn", pb::Tier::Schema, "").await;
    let unborn: Uuid = op.metadata.as_ref().unwrap().tenant_id.parse().unwrap();
    env.until_step_done(&op.name, "seed").await;
    let e = apps.credentials(unborn, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("provisioning"), "{e:?}");
    assert_eq!(logins_on("main", unborn).await, 0);
    env.wait(&op.name).await;
}

#[tokio::test]
async fn bad_requests_are_refused_and_create_nothing() {
    let mut env = TestEnv::start().await;
    let mut apps = AppConnector::new(&env);
    let t = id(&env.provision("picky", pb::Tier::Pool, "").await);
    for ttl in [-1, 1, 59, 86_401, i64::MAX] {
        let e = apps.credentials(t, ttl).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{ttl}: {e:?}");
        assert!(e.message().contains("ttl_seconds"), "{e:?}");
    }
    for (tenant, code) in [
        ("", Code::InvalidArgument),
        ("no-such-tenant", Code::NotFound),
        ("'; DROP ROLE x; --", Code::InvalidArgument),
    ] {
        let e = env
            .tenants
            .issue_credentials(pb::IssueCredentialsRequest {
                tenant: tenant.into(),
                ttl_seconds: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{tenant:?}: {e:?}");
    }
    assert_eq!(logins_on("main", t).await, 0);
    // The shortest and the longest TTL are fine.
    for ttl in [60, 86_400] {
        apps.credentials(t, ttl).await.unwrap();
    }
    assert_eq!(logins_on("main", t).await, 2);
}

#[tokio::test]
async fn issuance_is_audited_without_the_password() {
    let mut env = TestEnv::start().await;
    let t = env.provision("audited-login", pb::Tier::Schema, "").await;
    let c = AppConnector::new(&env)
        .credentials(id(&t), 120)
        .await
        .unwrap();
    let events = env.audit_events(&t.id).await;
    let issued = events
        .iter()
        .find(|e| e.method.ends_with("/IssueCredentials"))
        .expect("an audit entry");
    assert_eq!(
        (issued.principal.as_str(), issued.code.as_str()),
        ("it-admin", "OK")
    );
    assert_eq!(
        issued.detail,
        format!("login {} until {}", c.username, c.expire_time)
    );
    assert!(
        events
            .iter()
            .all(|e| !format!("{e:?}").contains(&c.password))
    );
}

#[tokio::test]
async fn an_application_token_resolves_and_logs_in_only_where_its_labels_allow() {
    let mut env = TestEnv::start().await;
    let labelled = |slug: &'static str, region: &'static str| {
        let mut tenants = env.tenants.clone();
        async move {
            tenants
                .create_tenant(pb::CreateTenantRequest {
                    slug: slug.into(),
                    tier: pb::Tier::Pool as i32,
                    labels: [("region".to_owned(), region.to_owned())].into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let (eu, us) = (
        labelled("clinic-eu", "eu").await,
        labelled("clinic-us", "us").await,
    );
    env.wait(&eu.name).await;
    env.wait(&us.name).await;
    let channel = connect(&env.addr).await;
    let mut app = TenantServiceClient::new(with_token(
        channel,
        Bearer::new(Some(&eu_application_token())).unwrap(),
    ));
    app.resolve_tenant(pb::ResolveTenantRequest {
        tenant: "clinic-eu".into(),
    })
    .await
    .unwrap();
    let c = app
        .issue_credentials(pb::IssueCredentialsRequest {
            tenant: "clinic-eu".into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    login(&c).await.unwrap();
    for e in [
        app.resolve_tenant(pb::ResolveTenantRequest {
            tenant: "clinic-us".into(),
        })
        .await
        .unwrap_err(),
        app.issue_credentials(pb::IssueCredentialsRequest {
            tenant: "clinic-us".into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("region=eu"), "{e:?}");
    }
    // Nothing else, for any tenant.
    let e = app
        .get_tenant(pb::GetTenantRequest {
            tenant: "clinic-eu".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn tenantctl_prints_credentials_in_every_format_and_connects_psql() {
    use std::ffi::OsStr;
    use tenantd::auth::Role;
    let mut env = TestEnv::start().await;
    let t = env.provision("cli-clinic", pb::Tier::Schema, "").await;
    let run = |args: Vec<&str>| {
        let mut all = vec!["--addr", env.addr.as_str()];
        all.extend(args);
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        async move {
            let args: Vec<&OsStr> = all.iter().map(OsStr::new).collect();
            crate::harness::tenantctl(&args, Some(Role::Admin)).await
        }
    };
    // A URI that psql takes as it is.
    let uri = run(vec!["credentials", "cli-clinic", "--ttl", "2m"])
        .await
        .unwrap();
    let uri = uri.trim();
    assert!(uri.starts_with("postgresql://tl_"), "{uri}");
    let out = std::process::Command::new("psql")
        .args([uri, "-XAtc", "SELECT count(*) FROM appointment_types"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4", "{out:?}");
    // JSON with the expiry the TTL asked for; env lines libpq reads.
    let json = run(vec![
        "credentials",
        "cli-clinic",
        "--ttl",
        "90s",
        "--format",
        "json",
    ])
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(v["expire_time"].as_str().unwrap()).unwrap();
    let ttl = expires
        .signed_duration_since(chrono::Utc::now())
        .num_seconds();
    assert!((80..=90).contains(&ttl), "{ttl}");
    assert_eq!(v["route"]["tenant_id"], t.id.as_str());
    let env_lines = run(vec!["credentials", "cli-clinic", "--format", "env"])
        .await
        .unwrap();
    for var in ["PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD"] {
        assert!(
            env_lines.contains(&format!("export {var}='")),
            "{env_lines}"
        );
    }
    // connect runs psql as a fresh login, passing the arguments after `--`.
    let out = run(vec![
        "connect",
        "cli-clinic",
        "--",
        "-XAtc",
        "SELECT session_user LIKE 'tl\\_%', count(*) FROM appointment_types",
    ])
    .await
    .unwrap();
    assert_eq!(out.trim(), "t|4");
    // A TTL out of range is refused by the server, named.
    let e = run(vec!["credentials", "cli-clinic", "--ttl", "30s"])
        .await
        .unwrap_err();
    assert!(e.contains("ttl_seconds"), "{e}");
}

/// The URI of `c` for another database on the same server.
fn uri_for(c: &pb::Credentials, database: &str) -> String {
    let route = c.route.as_ref().unwrap();
    c.connection_uri
        .replace(&format!("/{}", route.database), &format!("/{database}"))
}

#[tokio::test]
async fn a_login_stays_in_its_container_with_bounded_sessions() {
    let (mut config, dir) = TestEnv::config().await;
    config.credentials.plans.insert(
        "strict".into(),
        tenantd::config::LoginLimits {
            idle_in_transaction_timeout_seconds: Some(2),
            ..Default::default()
        },
    );
    let registry_db = config
        .registry_url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .get_database()
        .unwrap()
        .to_owned();
    let mut env = TestEnv::start_with(config, dir).await;
    let mut apps = AppConnector::new(&env);
    let t = id(&env.provision("contained", pb::Tier::Schema, "").await);
    let c = apps.credentials(t, 0).await.unwrap();

    // No session in the maintenance databases or the registry's (closed to PUBLIC at start).
    for db in ["postgres", "template1", registry_db.as_str()] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match PgConnection::connect(&uri_for(&c, db)).await {
                Err(e) => {
                    assert_eq!(sqlstate(&e), "42501", "{db}: {e}");
                    break;
                }
                Ok(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "{db} still open to a tenant login"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    // Defaults bound what a session may hold; a plan may tighten them.
    let mut conn = login(&c).await.unwrap();
    let (idle, statement): (String, String) = sqlx::query_as(
        "SELECT current_setting('idle_in_transaction_session_timeout'),
                current_setting('statement_timeout')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((idle.as_str(), statement.as_str()), ("1min", "5min"));
    let mut strict = env.tenants.clone();
    strict
        .update_tenant(pb::UpdateTenantRequest {
            tenant: t.to_string(),
            plan: "strict".into(),
            update_mask: vec!["plan".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut idle = login(&apps.credentials(t, 0).await.unwrap()).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT 1")
        .execute(&mut idle)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        sqlx::query("SELECT 1").execute(&mut idle).await.is_err(),
        "an idle transaction past the plan's limit is ended"
    );

    // Large objects it creates in its container's database, as itself or as the tenant's
    // role, go with the tenant: the deletion is not stuck on them.
    let own = format!("t_{}", t.simple());
    sqlx::query("SELECT lo_create(0)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET ROLE {own}; SELECT lo_create(0); RESET ROLE"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    drop(conn);
    let op = crate::delete::delete(&mut env, crate::delete::request(&t.to_string())).await;
    crate::delete::certified(&mut env, &op).await;
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_largeobject_metadata m
         WHERE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = m.lomowner)",
    )
    .fetch_one(&admin("main", "tenants").await)
    .await
    .unwrap();
    assert_eq!(left, 0, "no large object is left without its owner");
}

#[tokio::test]
async fn one_tenants_open_transaction_does_not_hold_up_anothers_move() {
    let mut env = TestEnv::start().await;
    let mut apps = AppConnector::new(&env);
    let moving = env.provision("moves-freely", pb::Tier::Schema, "").await;
    let busy = id(&env
        .provision("holds-a-transaction", pb::Tier::Schema, "")
        .await);
    // The neighbour writes and keeps its transaction open, in the same database.
    let mut open = login(&apps.credentials(busy, 0).await.unwrap())
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut open).await.unwrap();
    insert_patient(&mut open, busy, "mrn-open").await.unwrap();
    let started = Instant::now();
    crate::change_tier::move_to(&mut env, &moving, pb::Tier::Database, "main").await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the move did not wait for the neighbour"
    );
    sqlx::raw_sql("COMMIT").execute(&mut open).await.unwrap();
    assert_eq!(patients(&mut open).await.len(), 1);
}
