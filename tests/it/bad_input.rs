//! Bad input gets INVALID_ARGUMENT naming the field, and changes nothing.

use std::collections::HashMap;

use tenantd::api::pb;
use tonic::Code;

use crate::harness::{TestEnv, bad_field};

fn valid() -> pb::CreateTenantRequest {
    pb::CreateTenantRequest {
        slug: "valid-slug".into(),
        tier: pb::Tier::Pool as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn invalid_create_requests_name_the_field_and_create_nothing() {
    let mut env = TestEnv::start().await;
    let mut cases: Vec<(&str, pb::CreateTenantRequest)> = Vec::new();
    for slug in [
        "",
        "ab",
        &"a".repeat(64),
        "Acme",
        "1clinic",
        "-clinic",
        "clinic_one",
        "clinic one",
        "\"quoted\"",
        "a\"; drop schema x; --",
        "acme'; DROP TABLE tenants; --",
        "clinic\0",
        "klinik-ü",
    ] {
        cases.push((
            "slug",
            pb::CreateTenantRequest {
                slug: slug.into(),
                ..valid()
            },
        ));
    }
    cases.push(("tier", pb::CreateTenantRequest { tier: 0, ..valid() }));
    cases.push((
        "tier",
        pb::CreateTenantRequest {
            tier: 42,
            ..valid()
        },
    ));
    let many: HashMap<String, String> = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    cases.push((
        "labels",
        pb::CreateTenantRequest {
            labels: many,
            ..valid()
        },
    ));
    cases.push((
        "labels",
        pb::CreateTenantRequest {
            labels: [("k".repeat(64), "v".into())].into(),
            ..valid()
        },
    ));
    cases.push((
        "labels",
        pb::CreateTenantRequest {
            labels: [("k".into(), "v".repeat(257))].into(),
            ..valid()
        },
    ));
    cases.push((
        "labels",
        pb::CreateTenantRequest {
            labels: [("Bad Key".into(), "v".into())].into(),
            ..valid()
        },
    ));
    cases.push((
        "display_name",
        pb::CreateTenantRequest {
            display_name: "x".repeat(201),
            ..valid()
        },
    ));
    cases.push((
        "display_name",
        pb::CreateTenantRequest {
            display_name: "bell\u{7}".into(),
            ..valid()
        },
    ));
    cases.push((
        "plan",
        pb::CreateTenantRequest {
            plan: "p".repeat(201),
            ..valid()
        },
    ));
    cases.push((
        "cluster",
        pb::CreateTenantRequest {
            cluster: "nowhere".into(),
            ..valid()
        },
    ));
    cases.push((
        "request_id",
        pb::CreateTenantRequest {
            request_id: "has space".into(),
            ..valid()
        },
    ));
    cases.push((
        "request_id",
        pb::CreateTenantRequest {
            request_id: "r".repeat(129),
            ..valid()
        },
    ));

    for (field, req) in cases {
        let shown = format!("{req:?}");
        let e = env.tenants.create_tenant(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{shown}: {e:?}");
        assert_eq!(bad_field(&e), field, "{shown}: {}", e.message());
    }
    let (tenants, ops): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM tenants), (SELECT count(*) FROM operations)")
            .fetch_one(&env.registry)
            .await
            .unwrap();
    assert_eq!((tenants, ops), (0, 0), "nothing was created");

    // A valid request still works afterwards.
    let op = env
        .tenants
        .create_tenant(valid())
        .await
        .unwrap()
        .into_inner();
    env.wait(&op.name).await;
}

#[tokio::test]
async fn lookups_and_updates_validate_their_arguments() {
    let mut env = TestEnv::start().await;
    let e = env
        .tenants
        .get_tenant(pb::GetTenantRequest {
            tenant: "x\"; --".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), bad_field(&e).as_str()),
        (Code::InvalidArgument, "tenant")
    );
    let e = env
        .tenants
        .get_tenant(pb::GetTenantRequest {
            tenant: "no-such-clinic".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = env
        .tenants
        .get_tenant(pb::GetTenantRequest {
            tenant: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = env
        .ops
        .get_operation(pb::GetOperationRequest {
            name: "operations/'1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), bad_field(&e).as_str()),
        (Code::InvalidArgument, "name")
    );
    let e = env
        .ops
        .get_operation(pb::GetOperationRequest {
            name: format!("operations/{}", uuid::Uuid::new_v4()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = env
        .tenants
        .list_tenants(pb::ListTenantsRequest {
            page_token: "forged".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), bad_field(&e).as_str()),
        (Code::InvalidArgument, "page_token")
    );
    let e = env
        .tenants
        .list_tenants(pb::ListTenantsRequest {
            page_size: -5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), bad_field(&e).as_str()),
        (Code::InvalidArgument, "page_size")
    );

    env.provision("upd-clinic", pb::Tier::Pool, "").await;
    for (mask, field) in [
        (vec![], "update_mask"),
        (vec!["slug".to_owned()], "update_mask"),
        (vec!["display_name".to_owned()], "display_name"),
    ] {
        let e = env
            .tenants
            .update_tenant(pb::UpdateTenantRequest {
                tenant: "upd-clinic".into(),
                update_mask: mask,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), bad_field(&e).as_str()),
            (Code::InvalidArgument, field)
        );
    }
    // ResolveTenant refuses a tenant that is not active.
    let op = env.create("not-yet", pb::Tier::Database, "").await;
    let resolved = env
        .tenants
        .resolve_tenant(pb::ResolveTenantRequest {
            tenant: "not-yet".into(),
        })
        .await;
    if let Err(e) = resolved {
        assert_eq!(e.code(), Code::FailedPrecondition);
    }
    env.wait(&op.name).await;
}

#[tokio::test]
async fn invalid_tier_changes_name_the_field_and_change_nothing() {
    let mut env = TestEnv::start().await;
    let t = env.provision("steady", pb::Tier::Pool, "").await;
    let ask = |tenant: &str, tier: i32, cluster: &str, request_id: &str| pb::ChangeTierRequest {
        copy_mb_per_s: 0,
        tenant: tenant.into(),
        tier,
        cluster: cluster.into(),
        request_id: request_id.into(),
    };
    let schema = pb::Tier::Schema as i32;
    for (request, code, field) in [
        (ask(&t.slug, 0, "", ""), Code::InvalidArgument, "tier"),
        (ask(&t.slug, 42, "", ""), Code::InvalidArgument, "tier"),
        (
            ask("x\"; --", schema, "", ""),
            Code::InvalidArgument,
            "tenant",
        ),
        (
            ask(&t.slug, schema, "nowhere", ""),
            Code::InvalidArgument,
            "cluster",
        ),
        (
            ask(&t.slug, schema, "", "bad id!"),
            Code::InvalidArgument,
            "request_id",
        ),
        (ask("no-such-clinic", schema, "", ""), Code::NotFound, ""),
        (
            ask(&t.slug, pb::Tier::Pool as i32, "", ""),
            Code::FailedPrecondition,
            "",
        ),
    ] {
        let e = env.tenants.change_tier(request.clone()).await.unwrap_err();
        assert_eq!(
            (e.code(), bad_field(&e).as_str()),
            (code, field),
            "{request:?}: {e:?}"
        );
    }
    let ops = env
        .ops
        .list_operations(pb::ListOperationsRequest {
            tenant: t.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ops.operations.len(), 1, "only the provisioning");
    let now = env.tenant(&t.id).await;
    assert_eq!((now.tier, now.routing_epoch), (t.tier, t.routing_epoch));
}

#[tokio::test]
async fn invalid_export_requests_are_refused_and_start_nothing() {
    let mut env = TestEnv::start().await;
    for tenant in ["", "x'; DROP TABLE exports; --", "Acme"] {
        let e = env
            .exports
            .export_tenant(pb::ExportTenantRequest {
                tenant: tenant.into(),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{tenant:?}: {e:?}");
        assert_eq!(bad_field(&e), "tenant");
    }
    let e = env
        .exports
        .export_tenant(pb::ExportTenantRequest {
            tenant: "no-such-tenant".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = env
        .exports
        .export_tenant(pb::ExportTenantRequest {
            tenant: "valid-slug".into(),
            request_id: "bad id with spaces".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    for name in ["", "exports/not-a-uuid", "../../etc/passwd"] {
        let e = env
            .exports
            .get_export(pb::GetExportRequest { name: name.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name:?}");
        assert_eq!(bad_field(&e), "name");
        let e = env
            .exports
            .read_export(pb::ReadExportRequest { name: name.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name:?}");
    }
    let missing = format!("exports/{}", uuid::Uuid::new_v4());
    let e = env
        .exports
        .get_export(pb::GetExportRequest {
            name: missing.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = env
        .exports
        .read_export(pb::ReadExportRequest { name: missing })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let (ops, exports): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM operations), (SELECT count(*) FROM exports)")
            .fetch_one(&env.registry)
            .await
            .unwrap();
    assert_eq!((ops, exports), (0, 0));
}

#[tokio::test]
async fn invalid_restore_requests_name_the_field_and_change_nothing() {
    let mut env = TestEnv::start().await;
    env.provision("rst-bad", pb::Tier::Schema, "main").await;
    let export = crate::export::export(&mut env, "rst-bad").await;
    let in_place = pb::RestoreTenantRequest {
        export: export.name.clone(),
        mode: pb::RestoreMode::InPlace as i32,
        ..Default::default()
    };
    let as_new = pb::RestoreTenantRequest {
        mode: pb::RestoreMode::AsNewTenant as i32,
        new_slug: "rst-bad-copy".into(),
        ..in_place.clone()
    };
    let cases = [
        (
            "export",
            pb::RestoreTenantRequest {
                export: String::new(),
                ..in_place.clone()
            },
        ),
        (
            "export",
            pb::RestoreTenantRequest {
                export: "exports/x'; --".into(),
                ..in_place.clone()
            },
        ),
        (
            "mode",
            pb::RestoreTenantRequest {
                mode: 0,
                ..in_place.clone()
            },
        ),
        (
            "mode",
            pb::RestoreTenantRequest {
                mode: 9,
                ..in_place.clone()
            },
        ),
        (
            "new_slug",
            pb::RestoreTenantRequest {
                new_slug: "x".into(),
                ..in_place.clone()
            },
        ),
        (
            "tier",
            pb::RestoreTenantRequest {
                tier: pb::Tier::Pool as i32,
                ..in_place.clone()
            },
        ),
        (
            "new_slug",
            pb::RestoreTenantRequest {
                new_slug: String::new(),
                ..as_new.clone()
            },
        ),
        (
            "new_slug",
            pb::RestoreTenantRequest {
                new_slug: "Bad Slug".into(),
                ..as_new.clone()
            },
        ),
        (
            "tier",
            pb::RestoreTenantRequest {
                tier: 7,
                ..as_new.clone()
            },
        ),
        (
            "cluster",
            pb::RestoreTenantRequest {
                cluster: "nowhere".into(),
                ..as_new.clone()
            },
        ),
        (
            "request_id",
            pb::RestoreTenantRequest {
                request_id: "a b".into(),
                ..as_new.clone()
            },
        ),
    ];
    for (field, request) in cases {
        let e = env.exports.restore_tenant(request).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert_eq!(bad_field(&e), field, "{e:?}");
    }
    let missing = pb::RestoreTenantRequest {
        export: format!("exports/{}", uuid::Uuid::new_v4()),
        ..in_place.clone()
    };
    let e = env.exports.restore_tenant(missing).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let taken = pb::RestoreTenantRequest {
        new_slug: "rst-bad".into(),
        ..as_new
    };
    let e = env.exports.restore_tenant(taken).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let (ops, tenants): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM operations WHERE kind = 'restore'),
                (SELECT count(*) FROM tenants)",
    )
    .fetch_one(&env.registry)
    .await
    .unwrap();
    assert_eq!((ops, tenants), (0, 1));
}
