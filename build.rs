//! Compiles the gRPC protos into `OUT_DIR`, with a descriptor set for server reflection.
//! protoc comes from `protoc-bin-vendored` unless `PROTOC` is set, so no system package is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/tenantd/v1/resources.proto",
        "proto/tenantd/v1/operation.proto",
        "proto/tenantd/v1/tenant.proto",
        "proto/tenantd/v1/export.proto",
        "proto/tenantd/v1/deletion.proto",
        "proto/tenantd/v1/audit.proto",
        "proto/tenantd/v1/fleet.proto",
        "proto/tenantd/v1/backup.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("tenantd_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    // sqlx::migrate! embeds these at compile time but cannot ask cargo to watch them.
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}
