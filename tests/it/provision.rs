//! Provisioning in every tier, end to end, checked in the data plane.

use tenantd::api::pb;

use crate::harness::{AppConnector, TestEnv, admin, footprint, login};

async fn rls_flags(cluster: &str, db: &str, schema: &str) -> Vec<(String, bool, bool, i64)> {
    let pool = admin(cluster, db).await;
    sqlx::query_as(
        "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity,
                (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid)
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relkind = 'r'
           AND c.relname NOT IN ('tenant_schema_migrations', 'tenant_write_fences',
                                 'tenantd_write_fences')
         ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&pool)
    .await
    .unwrap()
}

fn assert_all_tables_forced_rls(flags: &[(String, bool, bool, i64)]) {
    let mut names: Vec<&str> = flags.iter().map(|f| f.0.as_str()).collect();
    names.sort();
    let expected = crate::harness::EXAMPLE_TABLES.to_vec();
    assert_eq!(names, expected);
    for (table, enabled, forced, policies) in flags {
        assert!(*enabled && *forced, "{table}: RLS enabled and forced");
        assert_eq!(*policies, 1, "{table}: one policy");
    }
}

async fn role_attributes(cluster: &str, role: &str) -> (bool, bool, bool) {
    let pool = admin(cluster, "postgres").await;
    sqlx::query_as("SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_one(&pool)
        .await
        .unwrap()
}

async fn owns_any_table(cluster: &str, db: &str, role: &str) -> bool {
    let pool = admin(cluster, db).await;
    sqlx::query_as::<_, (bool,)>("SELECT EXISTS (SELECT 1 FROM pg_tables WHERE tableowner = $1)")
        .bind(role)
        .fetch_one(&pool)
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn pool_tier_shares_tables_under_forced_rls() {
    let mut env = TestEnv::start().await;
    let t = env.provision("pool-clinic", pb::Tier::Pool, "").await;
    assert_eq!(t.state, pb::TenantState::Active as i32);
    assert_eq!(
        t.schema_version,
        tenantd::tenant_schema::TenantSchema::example().latest()
    );
    let p = t.placement.clone().unwrap();
    assert_eq!(
        (p.cluster.as_str(), p.database.as_str(), p.schema.as_str()),
        ("main", "tenants", "pool")
    );
    assert_eq!(p.role, "tenantd_pool_app");

    assert_all_tables_forced_rls(&rls_flags("main", "tenants", "pool").await);
    assert_eq!(
        role_attributes("main", "tenantd_pool_app").await,
        (false, false, false)
    );
    assert!(!owns_any_table("main", "tenants", "tenantd_pool_app").await);

    // The policy binds a login to its tenant, in the InitPlan form.
    let pool = admin("main", "tenants").await;
    let (qual,): (String,) = sqlx::query_as(
        "SELECT qual FROM pg_policies WHERE schemaname = 'pool' AND tablename = 'patients'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(qual, crate::harness::POLICY_DEPARSED);

    // Reference data was seeded for this tenant only.
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM pool.appointment_types WHERE tenant_id = $1::uuid")
            .bind(&t.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(n, 4);
    let f = footprint(&t.id, "main").await;
    assert_eq!(
        (f.schemas, f.databases, f.roles),
        (0, 0, 0),
        "pool tenants own no objects"
    );

    let route = env
        .tenants
        .resolve_tenant(pb::ResolveTenantRequest {
            tenant: "pool-clinic".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.tier, pb::Tier::Pool as i32);
    assert_eq!(route.session_settings["app.tenant_id"], t.id);
    assert_eq!(route.routing_epoch, 1);
    assert!(route.credential_ref.is_empty());
}

#[tokio::test]
async fn schema_tier_gets_its_own_schema_and_role() {
    let mut env = TestEnv::start().await;
    let t = env.provision("schema-clinic", pb::Tier::Schema, "").await;
    let p = t.placement.clone().unwrap();
    let own = format!("t_{}", uuid::Uuid::parse_str(&t.id).unwrap().simple());
    assert_eq!(
        (p.database.as_str(), p.schema.as_str(), p.role.as_str()),
        ("tenants", own.as_str(), own.as_str())
    );

    assert_all_tables_forced_rls(&rls_flags("main", "tenants", &own).await);
    // A group role: applications log in with issued logins that are its members.
    assert_eq!(role_attributes("main", &own).await, (false, false, false));
    assert!(!owns_any_table("main", "tenants", &own).await);
    assert_eq!(footprint(&t.id, "main").await.schemas, 1);

    // Privileges on its own schema only (and none on the pool's, if another test made it).
    let pool = admin("main", "tenants").await;
    let (own_usage, pool_usage): (bool, bool) = sqlx::query_as(
        "SELECT has_schema_privilege($1, $1, 'USAGE'),
                coalesce((SELECT has_schema_privilege($1, oid, 'USAGE') FROM pg_namespace
                          WHERE nspname = 'pool'), false)",
    )
    .bind(&own)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(own_usage && !pool_usage);
}

#[tokio::test]
async fn database_tier_on_another_cluster_is_reached_with_an_issued_login() {
    let mut env = TestEnv::start().await;
    let t = env
        .provision("db-clinic", pb::Tier::Database, "second")
        .await;
    let p = t.placement.clone().unwrap();
    let own = format!("t_{}", uuid::Uuid::parse_str(&t.id).unwrap().simple());
    assert_eq!(
        (p.cluster.as_str(), p.database.as_str(), p.schema.as_str()),
        ("second", own.as_str(), "app")
    );

    let on_second = footprint(&t.id, "second").await;
    assert_eq!((on_second.databases, on_second.roles), (1, 1));
    let on_main = footprint(&t.id, "main").await;
    assert_eq!(
        (on_main.databases, on_main.roles, on_main.schemas),
        (0, 0, 0)
    );
    assert_all_tables_forced_rls(&rls_flags("second", &own, "app").await);
    // The tenant's role never logs in, and no password of it is kept anywhere.
    assert_eq!(role_attributes("second", &own).await, (false, false, false));
    let (sealed,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM tenant_credentials WHERE tenant_id = $1::uuid")
            .bind(&t.id)
            .fetch_one(&env.registry)
            .await
            .unwrap();
    assert_eq!(sealed, 0);

    let route = env
        .tenants
        .resolve_tenant(pb::ResolveTenantRequest {
            tenant: t.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.database, own);
    assert!(route.credential_ref.is_empty());
    let c = AppConnector::new(&env)
        .credentials(t.id.parse().unwrap(), 0)
        .await
        .unwrap();
    assert_eq!(c.route.as_ref().unwrap().cluster, "second");
    let mut app = login(&c).await.expect("the issued login logs in");
    // search_path and app.tenant_id are the login's defaults: seeded rows are visible.
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM appointment_types")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(n, 4);
    // The shared tenants database on that cluster refuses the login.
    let shared = admin("second", "postgres").await;
    sqlx::query("CREATE DATABASE tenants")
        .execute(&shared)
        .await
        .ok();
    sqlx::query("REVOKE CONNECT ON DATABASE tenants FROM PUBLIC")
        .execute(&shared)
        .await
        .unwrap();
    let other = c.connection_uri.replace(&format!("/{own}"), "/tenants");
    assert!(sqlx::PgPool::connect(&other).await.is_err());
}

#[tokio::test]
async fn tenants_list_by_page_and_filter_and_update() {
    let mut env = TestEnv::start().await;
    for (slug, tier) in [
        ("list-a", pb::Tier::Pool),
        ("list-b", pb::Tier::Schema),
        ("list-c", pb::Tier::Pool),
    ] {
        env.provision(slug, tier, "").await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = env
            .tenants
            .list_tenants(pb::ListTenantsRequest {
                page_size: 1,
                page_token: token,
                tier: pb::Tier::Pool as i32,
                state: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.tenants.len() <= 1);
        seen.extend(page.tenants.into_iter().map(|t| t.slug));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["list-a", "list-c"]);

    let updated = env
        .tenants
        .update_tenant(pb::UpdateTenantRequest {
            tenant: "list-b".into(),
            display_name: "List B Health".into(),
            plan: "ignored".into(),
            labels: [("region".to_owned(), "eu".to_owned())].into(),
            update_mask: vec!["display_name".into(), "labels".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.display_name, "List B Health");
    assert_eq!(updated.plan, "standard", "not in the mask, not changed");
    assert_eq!(updated.labels.len(), 1);

    let ops = env
        .ops
        .list_operations(pb::ListOperationsRequest {
            tenant: "list-b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ops.operations.len(), 1);
    let steps = &ops.operations[0].metadata.as_ref().unwrap().steps;
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "reserve",
            "create_key",
            "create_container",
            "migrate",
            "grant",
            "seed",
            "activate"
        ]
    );
    assert!(
        steps
            .iter()
            .all(|s| s.state == pb::StepState::Done as i32 && s.attempts == 1)
    );
}

#[tokio::test]
async fn watch_streams_progress_until_done_and_health_and_reflection_answer() {
    let mut env = TestEnv::start().await;
    let op = env.create("watched", pb::Tier::Schema, "").await;
    let mut stream = env
        .ops
        .watch_operation(pb::WatchOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut updates = Vec::new();
    while let Some(u) = stream.message().await.unwrap() {
        updates.push(u);
    }
    let last = updates.last().unwrap();
    assert!(last.done);
    assert!(matches!(
        last.result,
        Some(pb::operation::Result::Tenant(_))
    ));
    assert!(updates.len() >= 2, "saw intermediate states");
    assert!(updates.iter().take(updates.len() - 1).all(|u| !u.done));

    // Cancelling a finished operation changes nothing.
    let after = env
        .ops
        .cancel_operation(pb::CancelOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let m = after.metadata.unwrap();
    assert_eq!(m.state, pb::OperationState::Succeeded as i32);
    assert!(!m.cancel_requested);

    let channel = crate::harness::connect(&env.addr).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in [
        "",
        "tenantd.v1.TenantService",
        "tenantd.v1.OperationService",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(crate::harness::as_admin(channel));
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "tenantd.v1.TenantService",
        "tenantd.v1.OperationService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
}
