//! Access control and hardened input, from outside: every RPC × every role × no
//! credentials, malformed and oversized messages, deadlines, and mutual TLS.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};

use tenantd::api::pb;
use tenantd::auth::Role;
use tenantd::config::{CertificateConfig, TlsConfig};

use crate::harness::{ROLES, TestEnv, connect, token};

/// Who may call what: written out here, independently of `auth::access`, so that a change to
/// the policy must change this table too. `*`: every role but `application`, which may only
/// resolve a tenant and log in to it.
const MATRIX: &[(&str, &str)] = &[
    ("tenantd.v1.TenantService/CreateTenant", "admin billing"),
    ("tenantd.v1.TenantService/GetTenant", "*"),
    ("tenantd.v1.TenantService/ListTenants", "*"),
    ("tenantd.v1.TenantService/UpdateTenant", "admin"),
    ("tenantd.v1.TenantService/ResolveTenant", "* application"),
    (
        "tenantd.v1.TenantService/IssueCredentials",
        "admin application",
    ),
    (
        "tenantd.v1.TenantService/RevokeCredentials",
        "admin compliance",
    ),
    ("tenantd.v1.TenantService/ChangeTier", "admin billing"),
    ("tenantd.v1.OperationService/GetOperation", "*"),
    ("tenantd.v1.OperationService/ListOperations", "*"),
    ("tenantd.v1.OperationService/CancelOperation", "admin"),
    (
        "tenantd.v1.OperationService/WaitOperation",
        "admin billing compliance",
    ),
    (
        "tenantd.v1.OperationService/WatchOperation",
        "admin billing compliance",
    ),
    ("tenantd.v1.ExportService/ExportTenant", "admin compliance"),
    ("tenantd.v1.ExportService/GetExport", "*"),
    ("tenantd.v1.ExportService/ListExports", "*"),
    ("tenantd.v1.ExportService/ReadExport", "admin compliance"),
    ("tenantd.v1.ExportService/GetSigningKey", "*"),
    ("tenantd.v1.ExportService/RestoreTenant", "admin"),
    ("tenantd.v1.ExportService/DeleteExport", "admin compliance"),
    (
        "tenantd.v1.BackupService/SetBackupPolicy",
        "admin compliance",
    ),
    ("tenantd.v1.BackupService/GetBackupPolicy", "*"),
    ("tenantd.v1.BackupService/ListBackupPolicies", "*"),
    (
        "tenantd.v1.BackupService/DeleteBackupPolicy",
        "admin compliance",
    ),
    ("tenantd.v1.BackupService/GetBackupStatus", "*"),
    ("tenantd.v1.BackupService/SetLegalHold", "admin compliance"),
    (
        "tenantd.v1.BackupService/ClearLegalHold",
        "admin compliance",
    ),
    (
        "tenantd.v1.DeletionService/DeleteTenant",
        "admin compliance",
    ),
    (
        "tenantd.v1.DeletionService/GetDeletionCertificate",
        "admin compliance",
    ),
    (
        "tenantd.v1.DeletionService/ListDeletionCertificates",
        "admin compliance",
    ),
    (
        "tenantd.v1.AuditService/ListAuditEvents",
        "admin compliance",
    ),
    ("tenantd.v1.AuditService/VerifyAuditLog", "admin compliance"),
    ("tenantd.v1.FleetService/GetFleetSchema", "*"),
    ("tenantd.v1.FleetService/MigrateFleet", "admin"),
    ("tenantd.v1.FleetService/ResumeRollout", "admin"),
    ("tenantd.v1.FleetService/ListRolloutTargets", "*"),
    ("tenantd.v1.FleetService/RetryRolloutTarget", "admin"),
];

fn allowed(roles: &str, role: Role) -> bool {
    roles
        .split(' ')
        .any(|r| r == role.as_str() || (r == "*" && role != Role::Application))
}

/// Every method of the tenantd services, from the descriptor set the server reflects, and
/// whether it streams its answer.
fn methods() -> Vec<(String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = Vec::new();
    for file in set.file {
        let package = file.package().to_owned();
        for service in file.service {
            let name = service.name().to_owned();
            for m in service.method {
                out.push((
                    format!("{package}.{name}/{}", m.name()),
                    m.server_streaming(),
                ));
            }
        }
    }
    out
}

/// Sends raw bytes as the request message: the harness for calls that the typed clients
/// cannot make (any method by name, malformed messages).
#[derive(Clone, Copy)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Calls `method` with `body` as the message; the status code of the answer (for a stream,
/// of its first message).
async fn call(
    channel: &Channel,
    method: &str,
    streaming: bool,
    bearer: Option<&str>,
    body: Bytes,
) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = Request::new(body);
    if let Some(t) = bearer {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let path = http::uri::PathAndQuery::try_from(format!("/{method}")).unwrap();
    let answer = if streaming {
        match grpc
            .server_streaming::<_, Bytes, _>(request, path, Raw)
            .await
        {
            Ok(r) => r.into_inner().message().await.map(|_| ()),
            Err(s) => Err(s),
        }
    } else {
        grpc.unary::<_, Bytes, _>(request, path, Raw)
            .await
            .map(|_| ())
    };
    answer.err().unwrap_or_else(|| Status::ok(""))
}

#[tokio::test]
async fn every_rpc_answers_every_role_by_the_matrix() {
    let mut env = TestEnv::start().await;
    let channel = connect(&env.addr).await;

    let served: BTreeSet<String> = methods().into_iter().map(|(m, _)| m).collect();
    let listed: BTreeSet<String> = MATRIX.iter().map(|(m, _)| (*m).to_owned()).collect();
    assert_eq!(
        served, listed,
        "every RPC has a row in the matrix, and only those"
    );

    let mut denied = 0;
    for (method, streaming) in methods() {
        let roles = MATRIX.iter().find(|(m, _)| *m == method).unwrap().1;
        // No credentials, and credentials nobody issued.
        for bearer in [None, Some("tdt_not-a-token")] {
            let s = call(&channel, &method, streaming, bearer, Bytes::new()).await;
            assert_eq!(
                s.code(),
                Code::Unauthenticated,
                "{method} {bearer:?}: {s:?}"
            );
        }
        for role in ROLES {
            let s = call(
                &channel,
                &method,
                streaming,
                Some(&token(role)),
                Bytes::new(),
            )
            .await;
            if allowed(roles, role) {
                // An empty request reaches the handler: answered, or refused as invalid.
                assert!(
                    matches!(s.code(), Code::Ok | Code::InvalidArgument | Code::NotFound),
                    "{method} as {role}: {s:?}"
                );
            } else {
                denied += 1;
                assert_eq!(
                    s.code(),
                    Code::PermissionDenied,
                    "{method} as {role}: {s:?}"
                );
                assert!(
                    s.message().contains(&format!("it-{role} (role {role})")),
                    "{s:?}"
                );
            }
        }
    }
    let expected: usize = MATRIX
        .iter()
        .map(|(_, roles)| ROLES.iter().filter(|&&r| !allowed(roles, r)).count())
        .sum();
    assert_eq!((denied, expected), (88, 88));

    // Health answers without credentials (probes); reflection needs them.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    let s = call(
        &channel,
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        true,
        None,
        Bytes::new(),
    )
    .await;
    assert_eq!(s.code(), Code::Unauthenticated);

    // None of it changed anything…
    let tenants = env
        .tenants
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(tenants.tenants.is_empty());
    let ops = env
        .ops
        .list_operations(pb::ListOperationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(ops.operations.is_empty());
    // …and every refusal is in the audit log, with who and what.
    let events = env.audit_events("").await;
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e.code == "PERMISSION_DENIED")
        .collect();
    assert_eq!(refused.len(), denied);
    assert!(refused.iter().any(|e| e.principal == "it-viewer"
        && e.role == "viewer"
        && e.method == "/tenantd.v1.DeletionService/DeleteTenant"));
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>());
    // The invalid requests that reached audited handlers are there too.
    assert!(events.iter().any(|e| e.principal == "it-billing"
        && e.method == "/tenantd.v1.TenantService/CreateTenant"
        && e.code == "INVALID_ARGUMENT"));
}

#[tokio::test]
async fn malformed_and_oversized_messages_get_clean_errors_and_the_server_keeps_serving() {
    let mut env = TestEnv::start().await;
    let channel = connect(&env.addr).await;
    let admin = token(Role::Admin);
    let create = "tenantd.v1.TenantService/CreateTenant";

    // Bytes that are not a CreateTenantRequest: a truncated varint, a field with a wrong wire
    // type, a length running past the end.
    for garbage in [
        &[0x08u8, 0xff][..],
        &[0x0a, 0x05, b'a'],
        &[0x0f; 16],
        &[0xff; 64],
    ] {
        let s = call(
            &channel,
            create,
            false,
            Some(&admin),
            Bytes::copy_from_slice(garbage),
        )
        .await;
        assert_eq!(s.code(), Code::Internal, "{garbage:?}: {s:?}");
        assert!(s.message().contains("decode"), "{s:?}");
    }

    // Larger than [server] max_request_bytes (64 KiB): refused before it is decoded.
    let big = pb::CreateTenantRequest {
        slug: "big".into(),
        display_name: "x".repeat(100 * 1024),
        tier: pb::Tier::Pool as i32,
        ..Default::default()
    };
    let s = call(
        &channel,
        create,
        false,
        Some(&admin),
        big.encode_to_vec().into(),
    )
    .await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    let s = env.tenants.create_tenant(big).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    // 8 MiB: over the limit by far.
    let huge = Bytes::from(vec![0u8; 8 << 20]);
    let s = call(&channel, create, false, Some(&admin), huge).await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");

    // A well-formed message for an unknown method: UNIMPLEMENTED is not reached, the
    // policy refuses it first.
    let s = call(
        &channel,
        "tenantd.v1.TenantService/DropAll",
        false,
        Some(&admin),
        Bytes::new(),
    )
    .await;
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // Headers past 16 KiB (here a 64 KiB "token") are refused by HTTP/2 itself.
    let long = "x".repeat(64 * 1024);
    let s = call(&channel, create, false, Some(&long), Bytes::new()).await;
    assert!(
        !matches!(s.code(), Code::Ok | Code::InvalidArgument),
        "{s:?}"
    );

    // Still serving, and nothing was created.
    let channel = connect(&env.addr).await;
    let s = call(
        &channel,
        "tenantd.v1.TenantService/ListTenants",
        false,
        Some(&admin),
        Bytes::new(),
    )
    .await;
    assert_eq!(s.code(), Code::Ok, "{s:?}");
    let tenants = env
        .tenants
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(tenants.tenants.is_empty());
    let op = env.create("after-garbage", pb::Tier::Pool, "").await;
    assert!(op.name.starts_with("operations/"));
}

#[tokio::test]
async fn deadlines_are_honoured_and_capped() {
    // The provisioning stalls, so that WaitOperation would wait its full 30 s.
    let (mut config, dir) = TestEnv::config().await;
    config.server.max_call_seconds = 2;
    let mut env =
        TestEnv::spawn_with(config, dir, "provision.before_create_key=sleep(20000)").await;
    let op = env.create("slow", pb::Tier::Pool, "").await;
    let wait = |timeout: Option<Duration>| {
        let mut r = Request::new(pb::WaitOperationRequest {
            name: op.name.clone(),
            timeout_seconds: 30,
        });
        if let Some(t) = timeout {
            r.set_timeout(t);
        }
        r
    };
    // The caller's deadline (tonic's client enforces it too: whichever side is first).
    let s = env
        .ops
        .wait_operation(wait(Some(Duration::from_millis(300))))
        .await
        .unwrap_err();
    assert!(
        matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{s:?}"
    );
    // No deadline, or a longer one than the server's cap of 2 s: the server ends the call.
    for timeout in [None, Some(Duration::from_secs(60))] {
        let s = env.ops.wait_operation(wait(timeout)).await.unwrap_err();
        assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
    }
    // The operation itself is unaffected.
    let got = env
        .ops
        .get_operation(pb::GetOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!got.done);
}

/// A CA, a server certificate for `localhost`, and client certificates, all PEM.
struct Pki {
    ca: String,
    server: (String, String),
    billing: (String, String),
    intruder: (String, String),
    stranger: (String, String),
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_params = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p
    };
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params("tenantd test CA").self_signed(&ca_key).unwrap();
    let ca = Issuer::new(ca_params("tenantd test CA"), ca_key);
    let other_key = KeyPair::generate().unwrap();
    let other = Issuer::new(ca_params("someone else's CA"), other_key);
    let leaf = |issuer: &Issuer<'_, KeyPair>, sans: Vec<String>, cn: &str| {
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, "Example Health");
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca_cert.pem(),
        server: leaf(&ca, vec!["localhost".into()], "tenantd"),
        billing: leaf(&ca, vec![], "billing-system"),
        intruder: leaf(&ca, vec![], "intruder"),
        stranger: leaf(&other, vec![], "billing-system"),
    }
}

#[tokio::test]
async fn mutual_tls_maps_certificate_subjects_to_principals() {
    let pki = pki();
    let (mut config, dir) = TestEnv::config().await;
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    config.tls = Some(TlsConfig {
        cert_file: write("server.crt", &pki.server.0),
        key_file: write("server.key", &pki.server.1),
        client_ca_file: Some(write("ca.crt", &pki.ca)),
    });
    config.auth.certificates.push(CertificateConfig {
        // RFC 4514 order of rcgen's encoding (auth::certificate_subject's unit test).
        subject: "O=Example Health,CN=billing-system".into(),
        name: "billing-system".into(),
        role: Role::Billing,
        tenants: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(tenantd::server::run(config, listener, shutdown.clone()));
    let _stop = shutdown.drop_guard();

    let connect_tls = |identity: Option<&(String, String)>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        async move {
            let endpoint = Channel::from_shared(format!("https://127.0.0.1:{port}"))
                .unwrap()
                .tls_config(tls)
                .unwrap();
            for _ in 0..200 {
                if let Ok(c) = endpoint.connect().await {
                    return Ok(c);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            endpoint.connect().await
        }
    };
    let create = "tenantd.v1.TenantService/CreateTenant";
    let delete = "tenantd.v1.DeletionService/DeleteTenant";

    // The billing system's certificate: billing's rights, under its configured name.
    let billing = connect_tls(Some(&pki.billing)).await.unwrap();
    let s = call(&billing, create, false, None, Bytes::new()).await;
    assert_eq!(
        s.code(),
        Code::InvalidArgument,
        "reached the handler: {s:?}"
    );
    let s = call(&billing, delete, false, None, Bytes::new()).await;
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(
        s.message().contains("billing-system (role billing)"),
        "{s:?}"
    );
    // A certificate from the right CA with a subject nobody listed.
    let intruder = connect_tls(Some(&pki.intruder)).await.unwrap();
    let s = call(&intruder, create, false, None, Bytes::new()).await;
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    // No certificate: a token still works over TLS; nothing at all does not.
    let plain = connect_tls(None).await.unwrap();
    let s = call(
        &plain,
        create,
        false,
        Some(&token(Role::Viewer)),
        Bytes::new(),
    )
    .await;
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let s = call(&plain, create, false, None, Bytes::new()).await;
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    // A certificate from another CA does not get through the handshake.
    match connect_tls(Some(&pki.stranger)).await {
        Err(_) => {}
        Ok(c) => {
            // TLS 1.3: the server's refusal arrives with the first call.
            let s = call(&c, create, false, None, Bytes::new()).await;
            assert!(format!("{s:?}").contains("UnknownCA"), "{s:?}");
        }
    }
    // Plaintext to the TLS port is not served.
    let s = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(c) = s {
        let s = call(&c, create, false, Some(&token(Role::Admin)), Bytes::new()).await;
        assert_ne!(s.code(), Code::InvalidArgument, "{s:?}");
    }
}

/// One HTTP/1.1 exchange with the gRPC port, as a browser makes it: the raw answer.
async fn http1(addr: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hostport = addr.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(hostport).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

fn preflight(origin: &str) -> Vec<u8> {
    format!(
        "OPTIONS /tenantd.v1.TenantService/ListTenants HTTP/1.1\r\nHost: tenantd\r\n\
         Origin: {origin}\r\nAccess-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: authorization,content-type,x-grpc-web\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// A gRPC-web call of ListTenants with an empty request message.
fn grpc_web_call(origin: &str, bearer: Option<&str>) -> Vec<u8> {
    let frame = [0u8, 0, 0, 0, 0]; // uncompressed, length 0
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut r = format!(
        "POST /tenantd.v1.TenantService/ListTenants HTTP/1.1\r\nHost: tenantd\r\n\
         Origin: {origin}\r\nContent-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         {auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        frame.len()
    )
    .into_bytes();
    r.extend_from_slice(&frame);
    r
}

#[tokio::test]
async fn browsers_call_over_grpc_web_from_allowed_origins_only() {
    let (mut config, dir) = TestEnv::config().await;
    let console = "https://console.example.com";
    config.grpc_web.allowed_origins = vec![console.into()];
    let env = TestEnv::start_with(config, dir).await;

    // Preflight from the console: allowed, with the token header and the status headers.
    let answer = http1(&env.addr, &preflight(console)).await.to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("access-control-allow-origin: {console}")),
        "{answer}"
    );
    assert!(answer.contains("authorization"), "{answer}");
    // From anywhere else: no CORS grant, so the browser refuses to send the call.
    let answer = http1(&env.addr, &preflight("https://evil.example"))
        .await
        .to_lowercase();
    assert!(!answer.contains("access-control-allow-origin"), "{answer}");

    // The call itself, translated to gRPC and admitted like any other.
    let answer = http1(
        &env.addr,
        &grpc_web_call(console, Some(&token(Role::Viewer))),
    )
    .await;
    let lower = answer.to_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{answer}");
    assert!(
        lower.contains("content-type: application/grpc-web"),
        "{answer}"
    );
    assert!(
        lower.contains("grpc-status:0"),
        "OK in the trailer frame: {answer}"
    );
    assert!(lower.contains("access-control-expose-headers"), "{answer}");
    let answer = http1(&env.addr, &grpc_web_call(console, None))
        .await
        .to_lowercase();
    assert!(
        answer.contains("grpc-status: 16"),
        "UNAUTHENTICATED: {answer}"
    );
}

#[tokio::test]
async fn secrets_in_files_that_others_may_read_stop_the_service() {
    use std::os::unix::fs::PermissionsExt;
    let mut env = TestEnv::start().await;
    // Once it answers, it has made its master key.
    env.tenants
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap();
    let key = match &env.config.keys {
        tenantd::config::KeysConfig::Local { master_key_file } => master_key_file.clone(),
        other => panic!("{other:?}"),
    };
    let mode = |m| std::fs::Permissions::from_mode(m);
    std::fs::set_permissions(&key, mode(0o644)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = tenantd::server::run(env.config.clone(), listener, Default::default())
        .await
        .expect_err("refused")
        .to_string();
    std::fs::set_permissions(&key, mode(0o600)).unwrap();
    assert!(refused.contains("mode is 644"), "{refused}");

    // The dev stack's admin token likewise.
    let dir = env.dir.join("dev-state");
    std::fs::create_dir_all(&dir).unwrap();
    let (path, token) = tenantd::dev::admin_token(&dir).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(tenantd::dev::admin_token(&dir).unwrap().1, token);
    std::fs::set_permissions(&path, mode(0o604)).unwrap();
    let e = tenantd::dev::admin_token(&dir).unwrap_err().to_string();
    assert!(e.contains("mode is 604"), "{e}");
}
