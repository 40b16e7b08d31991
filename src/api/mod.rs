//! The gRPC surface: one service per file, thin handlers. A handler converts the request to
//! domain types (`convert`), calls one [`Control`](crate::service::Control) method, and
//! encodes the answer; errors become gRPC statuses in exactly one place (`status`).

pub mod audit;
pub mod backups;
pub mod convert;
pub mod deletions;
pub mod exports;
pub mod fleet;
pub mod operations;
pub mod status;
pub mod tenants;

/// Generated protobuf and gRPC code.
pub mod pb {
    tonic::include_proto!("tenantd.v1");

    /// Encoded descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tenantd_descriptor");
}
