//! tenantd: a tenant lifecycle control plane for multi-tenant PostgreSQL.
//!
//! Layout (docs/architecture.md): `api` (gRPC, thin) → `service` (what each RPC means) →
//! `registry` (control-plane persistence) and `workflow` (durable engine) running `workflows`
//! (one per lifecycle change) over the `dataplane` (tiers, catalog, roles) and `keys`.

pub mod api;
pub mod archive;
pub mod audit;
pub mod auth;
pub mod aws;
pub mod backup;
pub mod blobs;
pub mod certificate;
pub mod config;
pub mod context;
pub mod credentials;
pub mod dataplane;
pub mod dev;
pub mod embedded;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod operation;
pub mod paging;
pub mod pitr;
pub mod registry;
pub mod rollout;
pub mod scheduler;
pub mod secret_file;
pub mod server;
pub mod service;
pub mod sql;
pub mod sqlstate;
pub mod telemetry;
pub mod tenant;
pub mod tenant_schema;
pub mod workflow;
pub mod workflows;
