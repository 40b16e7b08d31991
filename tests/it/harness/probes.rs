//! What the tests look at in the data plane: a tenant's footprint, its rows, and connecting
//! to it the way an application does.

use sqlx::PgConnection;
use uuid::Uuid;

use tenantd::api::pb;
use tenantd::api::pb::tenant_service_client::TenantServiceClient;
use tenantd::auth::client::AuthChannel;
use tenantd::dataplane::tables;

use super::{TestEnv, admin};

/// The directory of the example tenant schema that ships in the repository.
pub const EXAMPLE_SCHEMA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/healthcare");

/// The example schema, as a data plane built outside tenantd migrates with it.
pub fn example_schema() -> std::sync::Arc<tenantd::tenant_schema::TenantSchema> {
    std::sync::Arc::new(tenantd::tenant_schema::TenantSchema::example())
}

/// The example schema's tables (tenant-migrations/ today): what the tests expect a container
/// of that schema to hold. Code under test reads tables from the catalog instead.
pub const EXAMPLE_TABLES: &[&str] = &[
    "appointment_types",
    "appointments",
    "audit_events",
    "clinical_notes",
    "encounters",
    "observations",
    "patients",
];

/// What the data plane holds for one tenant: schemas named after it, databases, roles.
#[derive(Debug, PartialEq, Eq)]
pub struct Footprint {
    pub schemas: i64,
    pub databases: i64,
    pub roles: i64,
    pub pool_rows: i64,
}

pub async fn footprint(tenant_id: &str, cluster: &str) -> Footprint {
    let id = Uuid::parse_str(tenant_id).unwrap();
    let own = format!("t_{}", id.simple());
    let admin_db = admin(cluster, "postgres").await;
    let (databases,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&own)
            .fetch_one(&admin_db)
            .await
            .unwrap();
    let (roles,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_roles WHERE rolname = $1")
        .bind(&own)
        .fetch_one(&admin_db)
        .await
        .unwrap();
    let (has_shared,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'tenants')")
            .fetch_one(&admin_db)
            .await
            .unwrap();
    let (mut schemas, mut pool_rows) = (0, 0);
    if has_shared {
        let shared = admin(cluster, "tenants").await;
        schemas =
            sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
                .bind(&own)
                .fetch_one(&shared)
                .await
                .unwrap()
                .0;
        let (pool_exists,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'pool' AND tablename = 'appointment_types')",
        )
        .fetch_one(&shared)
        .await
        .unwrap();
        if pool_exists {
            for table in tables::names_in(&shared, "pool").await.unwrap() {
                let q = format!("SELECT count(*) FROM pool.{table} WHERE tenant_id = $1");
                let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(q))
                    .bind(id)
                    .fetch_one(&shared)
                    .await
                    .unwrap();
                pool_rows += n;
            }
        }
    }
    Footprint {
        schemas,
        databases,
        roles,
        pool_rows,
    }
}

/// Where a tenant's tables are, as the test sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub cluster: String,
    pub database: String,
    pub schema: String,
}

impl Place {
    pub fn of(t: &pb::Tenant) -> Place {
        let p = t.placement.clone().expect("placed tenant");
        Place {
            cluster: p.cluster,
            database: p.database,
            schema: p.schema,
        }
    }

    pub fn pool(cluster: &str) -> Place {
        Place {
            cluster: cluster.into(),
            database: "tenants".into(),
            schema: "pool".into(),
        }
    }
}

/// Fills every tenant table for `tenant` at `place` with `n` patients' worth of rows (with
/// NULLs, quotes, tabs, newlines and non-ASCII text), as the superuser.
pub async fn fill(place: &Place, tenant: Uuid, n: i32) {
    let pool = admin(&place.cluster, &place.database).await;
    let sql = "
        INSERT INTO S.patients (tenant_id, mrn, given_name, family_name, birth_date, sex, email)
        SELECT $1, 'mrn-' || g, 'Given' || g, 'Family''s ' || g, date '1950-01-01' + g,
               (ARRAY['female','male','other','unknown'])[1 + g % 4],
               CASE WHEN g % 3 = 0 THEN NULL ELSE 'p' || g || '@example.org' END
        FROM generate_series(1, $2) g;
        INSERT INTO S.encounters (tenant_id, patient_id, kind, started_at, reason)
        SELECT tenant_id, id, 'ambulatory', now() - interval '1 day', E'tab\\there, newline\\n, quote \"'
        FROM S.patients WHERE tenant_id = $1;
        INSERT INTO S.observations (tenant_id, patient_id, encounter_id, code, value_numeric, unit, observed_at)
        SELECT tenant_id, patient_id, id, '8867-4', 72.5, '/min', now() FROM S.encounters WHERE tenant_id = $1;
        INSERT INTO S.clinical_notes (tenant_id, patient_id, author, body)
        SELECT tenant_id, id, 'dr-who', repeat('note ', 50) || 'ünïcödé ✓' FROM S.patients WHERE tenant_id = $1;
        INSERT INTO S.appointments (tenant_id, patient_id, type_code, starts_at)
        SELECT tenant_id, id, 'follow-up', now() + interval '7 days' FROM S.patients WHERE tenant_id = $1;
        INSERT INTO S.audit_events (tenant_id, actor, action, entity, details)
        SELECT $1, 'dr-who', 'read', 'patient', jsonb_build_object('n', g) FROM generate_series(1, $2) g;";
    let sql = sql.replace("S.", &format!("\"{}\".", place.schema));
    for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let q = sqlx::query(sqlx::AssertSqlSafe(stmt.to_owned())).bind(tenant);
        let q = if stmt.contains("$2") { q.bind(n) } else { q };
        q.execute(&pool).await.unwrap();
    }
}

/// Runs each of `statements` on `place` as the superuser, `S.` standing for its schema and
/// `$1` for `tenant`.
pub async fn for_tenant(place: &Place, tenant: Uuid, statements: &[&str]) {
    let pool = admin(&place.cluster, &place.database).await;
    for sql in statements {
        let sql = sql.replace("S.", &format!("\"{}\".", place.schema));
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .execute(&pool)
            .await
            .unwrap();
    }
}

/// Runs each of `statements` on `pool`, `$1` (where it stands) bound to `id`: to store an
/// operation the way an older release stored it.
pub async fn for_id(pool: &sqlx::PgPool, id: Uuid, statements: &[&str]) {
    for sql in statements {
        let q = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
        let q = if sql.contains("$1") { q.bind(id) } else { q };
        q.execute(pool).await.unwrap();
    }
}

/// Every row of `tenant` at `place`, per table in catalog order, as sorted text.
pub async fn snapshot(place: &Place, tenant: Uuid) -> Vec<(String, Vec<String>)> {
    let pool = admin(&place.cluster, &place.database).await;
    let mut out = Vec::new();
    for table in tables::names_in(&pool, &place.schema).await.unwrap() {
        let q = format!(
            "SELECT t::text FROM \"{}\".{table} t WHERE tenant_id = $1 ORDER BY 1",
            place.schema
        );
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(tenant)
            .fetch_all(&pool)
            .await
            .unwrap();
        out.push((table.to_string(), rows.into_iter().map(|r| r.0).collect()));
    }
    out
}

/// Connects to a tenant the way an application does: IssueCredentials, then a plain
/// connection with the login, host, port and database it returned. No session setting is
/// made: the login's own defaults put the session in the tenant. Nothing here reads the
/// registry or holds a key.
#[derive(Clone)]
pub struct AppConnector {
    pub tenants: TenantServiceClient<AuthChannel>,
}

impl AppConnector {
    pub fn new(env: &TestEnv) -> Self {
        AppConnector {
            tenants: env.tenants.clone(),
        }
    }

    /// Issues a login to `tenant` valid for `ttl_seconds` (0: the default).
    pub async fn credentials(
        &mut self,
        tenant: Uuid,
        ttl_seconds: i64,
    ) -> Result<pb::Credentials, tonic::Status> {
        Ok(self
            .tenants
            .issue_credentials(pb::IssueCredentialsRequest {
                tenant: tenant.to_string(),
                ttl_seconds,
            })
            .await?
            .into_inner())
    }

    /// A session for `tenant` and the routing epoch it was issued at.
    pub async fn connect(&mut self, tenant: Uuid) -> Result<(PgConnection, i64), String> {
        let c = self
            .credentials(tenant, 0)
            .await
            .map_err(|e| e.to_string())?;
        let epoch = c.route.as_ref().map_or(0, |r| r.routing_epoch);
        Ok((login(&c).await.map_err(|e| e.to_string())?, epoch))
    }
}

/// A connection with issued credentials, through the URI they came with.
pub async fn login(c: &pb::Credentials) -> Result<PgConnection, sqlx::Error> {
    use sqlx::ConnectOptions;
    c.connection_uri
        .parse::<sqlx::postgres::PgConnectOptions>()?
        .connect()
        .await
}

pub fn sqlstate(e: &sqlx::Error) -> String {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
        .unwrap_or_default()
}

/// `GET path` on the metrics port: (status line, body).
pub async fn http_get(port: u16, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: tenantd\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A pool tenant's container on `main` and a new schema-tier container for it on `second`,
/// migrated to the example schema's latest version; and the tenant tables, parents first.
pub async fn pool_to_schema_containers(
    main: &tenantd::dataplane::Cluster,
    second: &tenantd::dataplane::Cluster,
    tenant: Uuid,
) -> (
    tenantd::dataplane::Container,
    tenantd::dataplane::Container,
    Vec<tenantd::sql::Ident>,
) {
    use tenantd::dataplane::{Container, backend, catalog, tables};
    use tenantd::tenant::Tier;
    let src = Container::plan(tenant, Tier::Pool, main);
    let dst = Container::plan(tenant, Tier::Schema, second);
    backend(Tier::Schema).create(second, &dst).await.unwrap();
    catalog::migrate(
        second,
        &second.database(&dst.database),
        &dst.schema,
        tenantd::tenant_schema::TenantSchema::example().latest(),
    )
    .await
    .unwrap();
    let tables = tables::tenant_tables(main, &main.database(&src.database), &src.schema)
        .await
        .unwrap();
    (src, dst, tables)
}

/// Patients in `schema` of `db` on `cluster` that are not `tenant`'s.
pub async fn others_patients(cluster: &str, db: &str, schema: &str, tenant: Uuid) -> i64 {
    let q = format!("SELECT count(*) FROM \"{schema}\".patients WHERE tenant_id <> $1");
    let (others,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(q))
        .bind(tenant)
        .fetch_one(&admin(cluster, db).await)
        .await
        .unwrap();
    others
}

/// Copies `tenant`'s rows of `table` from `src` to `dst` as a fenced move does.
pub async fn copy_stopped(
    from: (&tenantd::dataplane::Cluster, &tenantd::dataplane::Container),
    to: (&tenantd::dataplane::Cluster, &tenantd::dataplane::Container),
    table: &tenantd::sql::Ident,
) -> u64 {
    use tenantd::dataplane::copy::{Writes, copy_table};
    copy_table(
        from,
        to,
        table,
        Writes::Stopped,
        &tenantd::dataplane::copy::Pace::unbounded(),
        &Default::default(),
    )
    .await
    .unwrap()
}

/// The keys, constraints and indexes of the tables at `place`, as sorted definitions with the
/// schema's name left out: two containers migrated alike show the same.
pub async fn keys_and_indexes(place: &Place) -> Vec<String> {
    let pool = admin(&place.cluster, &place.database).await;
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname || ' ' || k.conname || ' '
             || replace(pg_get_constraintdef(k.oid), quote_ident($1) || '.', '')
             || CASE WHEN k.convalidated THEN '' ELSE ' NOT VALIDATED' END
         FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
         UNION ALL
         SELECT replace(indexdef, quote_ident($1) || '.', '') FROM pg_indexes
         WHERE schemaname = $1
         ORDER BY 1",
    )
    .bind(&place.schema)
    .fetch_all(&pool)
    .await
    .unwrap();
    rows.into_iter().map(|(r,)| r).collect()
}
