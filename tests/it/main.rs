//! Black-box tests against real PostgreSQL: tenantd runs on 127.0.0.1:0 (or as a child process
//! for crash tests) and is driven through gRPC; outcomes are checked in the data plane.

mod access;
mod adapters;
mod audit;
mod backups;
mod bad_input;
mod change_tier;
mod changes;
mod conventions;
mod copy;
mod crash;
mod credentials;
mod delete;
mod deploy;
mod engine;
mod exhaustion;
mod export;
mod harness;
mod idempotency;
mod identifiers;
mod isolation;
mod lints;
mod online_move;
mod own_schema;
mod pitr;
mod postgres_tls;
mod provision;
mod replicas;
mod restore;
mod rollout;
mod sqlstate;
mod tables;
mod tenant_schema;
mod upgrade;
