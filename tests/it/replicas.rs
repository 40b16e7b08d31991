//! Running tenantd as a service: health follows the registry, and replicas share the work.

use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use tenantd::sql::{Ident, Statement};

use crate::harness::{TestEnv, admin, connect};

async fn health(client: &mut HealthClient<tonic::transport::Channel>) -> Option<ServingStatus> {
    let r = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tenantd.v1.TenantService".into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

async fn until(client: &mut HealthClient<tonic::transport::Channel>, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while health(client).await != Some(want) {
        assert!(Instant::now() < deadline, "health never became {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn health_follows_the_registry() {
    let env = TestEnv::start().await;
    let mut client = HealthClient::new(connect(&env.addr).await);
    assert_eq!(health(&mut client).await, Some(ServingStatus::Serving));

    // The registry database stops taking connections, and the ones open are cut.
    let db = env
        .config
        .registry_url
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let cluster = admin("main", "postgres").await;
    let cut = |allow: bool| {
        let (cluster, db) = (cluster.clone(), db.clone());
        async move {
            let alter = Statement::new("ALTER DATABASE ")
                .ident(&Ident::new(db.clone()).unwrap())
                .push(if allow {
                    " WITH ALLOW_CONNECTIONS true"
                } else {
                    " WITH ALLOW_CONNECTIONS false"
                });
            sqlx::raw_sql(alter.into_sql())
                .execute(&cluster)
                .await
                .unwrap();
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(&db)
            .execute(&cluster)
            .await
            .unwrap();
        }
    };
    cut(false).await;
    until(&mut client, ServingStatus::NotServing).await;
    // Back: serving again, and calls work.
    cut(true).await;
    until(&mut client, ServingStatus::Serving).await;
}
