//! Where an export's objects live in the object store. Everything of a tenant is below
//! [`tenant_prefix`] (a deletion empties it); only a deleted tenant's final export lives
//! outside it, under `handover/`, so the deletion leaves it for handing over.

use uuid::Uuid;

use crate::blobs::ObjectKey;
use crate::registry::exports::Export as ExportRow;

/// Object names of an export, all under `tenants/<tenant>/exports/<export>/`.
pub struct ExportKeys {
    pub prefix: ObjectKey,
    pub archive: ObjectKey,
    pub manifest: ObjectKey,
    pub signature: ObjectKey,
}

/// Everything of a tenant in the object store is below this prefix (a deletion empties it);
/// only a deleted tenant's final export lives elsewhere ([`ExportKeys::handover`]).
pub fn tenant_prefix(tenant_id: Uuid) -> ObjectKey {
    ObjectKey::new(format!("tenants/{tenant_id}")).expect("a uuid makes a valid key")
}

impl ExportKeys {
    pub fn new(tenant_id: Uuid, export_id: Uuid) -> ExportKeys {
        Self::at(format!(
            "{}/exports/{export_id}",
            tenant_prefix(tenant_id).as_str()
        ))
    }

    /// A deleted tenant's final export, outside the tenant's prefix so that the deletion
    /// leaves it for handing over: `handover/<tenant>/<export>/`.
    pub fn handover(tenant_id: Uuid, export_id: Uuid) -> ExportKeys {
        Self::at(format!("handover/{tenant_id}/{export_id}"))
    }

    pub fn for_row(row: &ExportRow) -> ExportKeys {
        if row.handover {
            Self::handover(row.tenant_id, row.id)
        } else {
            Self::new(row.tenant_id, row.id)
        }
    }

    /// The export's objects: the archive, its manifest and the manifest's signature.
    pub fn objects(&self) -> [&ObjectKey; 3] {
        [&self.archive, &self.manifest, &self.signature]
    }

    fn at(prefix: String) -> ExportKeys {
        let prefix = ObjectKey::new(prefix).expect("uuids make valid keys");
        let at = |name: &str| prefix.join(name).expect("valid key");
        ExportKeys {
            archive: at("dump.sql.zst.tdxs"),
            manifest: at("manifest.json"),
            signature: at("manifest.json.sig"),
            prefix,
        }
    }
}
