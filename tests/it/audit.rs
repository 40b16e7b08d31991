//! The audit log from outside: who did what to which tenant is recorded in the tenant's hash
//! chain, the registry refuses to change it, and verification names every entry altered or
//! removed by someone who got around that.

use sqlx::Connection;
use tonic::Code;

use tenantd::api::pb;
use tenantd::api::pb::deletion_service_client::DeletionServiceClient;
use tenantd::api::pb::export_service_client::ExportServiceClient;
use tenantd::api::pb::tenant_service_client::TenantServiceClient;
use tenantd::auth::Role;

use crate::harness::{TestEnv, as_role, connect, sqlstate, tenantctl};

async fn verify(env: &mut TestEnv) -> Vec<pb::AuditProblem> {
    env.audit
        .verify_audit_log(pb::VerifyAuditLogRequest::default())
        .await
        .unwrap()
        .into_inner()
        .problems
}

/// `tenantctl audit verify` as compliance staff: Ok(stdout) when intact, else Err(all output).
async fn tenantctl_verify(env: &TestEnv) -> Result<String, String> {
    let args = ["--addr", &env.addr, "audit", "verify"].map(std::ffi::OsStr::new);
    tenantctl(&args, Some(Role::Compliance)).await
}

/// Runs `sql` with `$1` = the tenant id on a connection that bypasses the triggers.
async fn tamper(intruder: &mut sqlx::PgConnection, sql: &'static str, tenant: uuid::Uuid) {
    sqlx::query(sql)
        .bind(tenant)
        .execute(intruder)
        .await
        .unwrap();
}

#[tokio::test]
async fn changes_are_audited_per_tenant_and_tampering_is_named() {
    let mut env = TestEnv::start().await;
    let channel = connect(&env.addr).await;
    let mut billing = TenantServiceClient::new(as_role(channel.clone(), Role::Billing));
    let mut compliance = ExportServiceClient::new(as_role(channel.clone(), Role::Compliance));
    let mut viewer = DeletionServiceClient::new(as_role(channel, Role::Viewer));

    let created = billing
        .create_tenant(pb::CreateTenantRequest {
            slug: "audited".into(),
            tier: pb::Tier::Pool as i32,
            request_id: "create-audited-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    env.wait(&created.name).await;
    let tenant = env.tenant("audited").await;
    env.tenants
        .update_tenant(pb::UpdateTenantRequest {
            tenant: "audited".into(),
            display_name: "Audited Clinic".into(),
            update_mask: vec!["display_name".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let export = compliance
        .export_tenant(pb::ExportTenantRequest {
            tenant: tenant.id.clone(),
            request_id: "export-audited-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    env.wait(&export.name).await;
    let refused = viewer
        .delete_tenant(pb::DeleteTenantRequest {
            tenant: "audited".into(),
            reason: "curious".into(),
            requested_by: "viewer".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let invalid = billing
        .change_tier(pb::ChangeTierRequest {
            tenant: "audited".into(),
            tier: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);

    // The tenant's chain: who, what, result, request id, in order; by id and by slug.
    let chain = env.audit_events(&tenant.id).await;
    assert_eq!(chain, env.audit_events("audited").await);
    let summary: Vec<(&str, &str, &str, &str)> = chain
        .iter()
        .map(|e| {
            let method = e.method.rsplit('/').next().unwrap();
            (
                e.principal.as_str(),
                method,
                e.code.as_str(),
                e.request_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("it-billing", "CreateTenant", "OK", "create-audited-1"),
            ("it-admin", "UpdateTenant", "OK", ""),
            ("it-compliance", "ExportTenant", "OK", "export-audited-1"),
            ("it-billing", "ChangeTier", "INVALID_ARGUMENT", ""),
        ]
    );
    assert_eq!(chain[0].detail, created.name);
    assert_eq!(chain[0].target, "audited");
    assert_eq!(chain[0].role, "billing");
    assert_eq!(chain[2].detail, export.name);
    assert!(chain[3].detail.contains("tier"), "{}", chain[3].detail);
    assert_eq!(chain[0].prev_hash, "0".repeat(64));
    for pair in chain.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
        assert_eq!(pair[1].seq, pair[0].seq + 1);
    }
    // The refusal names no tenant it could read: it is in the chain of no tenant.
    let elsewhere = env.audit_events("").await;
    assert!(elsewhere.iter().any(|e| e.principal == "it-viewer"
        && e.code == "PERMISSION_DENIED"
        && e.method.ends_with("/DeleteTenant")));
    assert!(verify(&mut env).await.is_empty());
    assert!(tenantctl_verify(&env).await.unwrap().contains("intact"));

    // Append-only, for the role tenantd runs as (here even a superuser).
    for statement in [
        "UPDATE audit_events SET principal = 'someone-else'",
        "DELETE FROM audit_events WHERE seq = 2",
        "TRUNCATE audit_events",
        "UPDATE audit_chains SET seq = seq - 1",
        "UPDATE audit_chains SET head = '\\x00'",
        "DELETE FROM audit_chains",
        "TRUNCATE audit_chains",
    ] {
        let e = sqlx::query(statement)
            .execute(&env.registry)
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{statement}: {e}");
    }

    // Someone who can switch the triggers off (a superuser in replica mode) is found out.
    let mut intruder = sqlx::PgConnection::connect(&env.config.registry_url)
        .await
        .unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut intruder)
        .await
        .unwrap();
    let id: uuid::Uuid = tenant.id.parse().unwrap();
    tamper(
        &mut intruder,
        "UPDATE audit_events SET principal = 'it-viewer' WHERE tenant_id = $1 AND seq = 2",
        id,
    )
    .await;
    let problems = verify(&mut env).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        (
            problems[0].tenant_id.as_str(),
            problems[0].seq,
            problems[0].kind
        ),
        (
            tenant.id.as_str(),
            2,
            pb::audit_problem::Kind::Altered as i32
        )
    );
    let err = tenantctl_verify(&env).await.unwrap_err();
    assert!(
        err.contains(&format!("{}: entry 2 was altered", tenant.id)),
        "{err}"
    );
    // Put back exactly: intact again.
    tamper(
        &mut intruder,
        "UPDATE audit_events SET principal = 'it-admin' WHERE tenant_id = $1 AND seq = 2",
        id,
    )
    .await;
    assert!(verify(&mut env).await.is_empty());

    // An entry removed from the middle, then the last one.
    tamper(
        &mut intruder,
        "DELETE FROM audit_events WHERE tenant_id = $1 AND seq = 3",
        id,
    )
    .await;
    let problems = verify(&mut env).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        (
            problems[0].seq,
            problems[0].kind,
            problems[0].detail.as_str()
        ),
        (
            3,
            pb::audit_problem::Kind::Removed as i32,
            "entry 3 was removed"
        )
    );
    tamper(
        &mut intruder,
        "DELETE FROM audit_events WHERE tenant_id = $1 AND seq = 4",
        id,
    )
    .await;
    let problems = verify(&mut env).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        problems[0].detail,
        "entries 3 to 4, the last ones, were removed"
    );
    let err = tenantctl_verify(&env).await.unwrap_err();
    assert!(err.contains("the last ones, were removed"), "{err}");
}

/// A caller that gives up (its deadline passes) after the change committed still leaves the
/// change's audit entry: every operation the loop started has one.
#[tokio::test]
async fn a_change_whose_caller_gave_up_still_has_its_entry() {
    let env = TestEnv::start().await;
    let (mut ok, mut gave_up) = (0, 0);
    for ms in 1..=50u64 {
        let mut request = tonic::Request::new(pb::CreateTenantRequest {
            slug: format!("impatient-{ms}"),
            tier: pb::Tier::Pool as i32,
            ..Default::default()
        });
        request.set_timeout(std::time::Duration::from_millis(ms));
        // A connection per call, as impatient clients would: many resets on one connection
        // would have the server close it (HTTP/2 rapid-reset protection).
        let mut tenants = TenantServiceClient::new(as_role(connect(&env.addr).await, Role::Admin));
        match tenants.create_tenant(request).await {
            Ok(_) => ok += 1,
            Err(s) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => gave_up += 1,
            Err(s) => panic!("{ms} ms: {s:?}"),
        }
    }
    assert!(gave_up > 0, "no call gave up ({ok} answered)");
    let unaudited = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM operations o WHERE NOT EXISTS
                 (SELECT 1 FROM audit_events a WHERE a.detail = 'operations/' || o.id)",
        )
        .fetch_one(&env.registry)
        .await
        .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while unaudited().await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "an operation has no audit entry"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let ops: i64 = sqlx::query_scalar("SELECT count(*) FROM operations")
        .fetch_one(&env.registry)
        .await
        .unwrap();
    assert!(
        ops >= ok,
        "{ops} operations, {ok} answered, {gave_up} gave up"
    );
}
