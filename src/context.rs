//! The service's shared dependencies, handed to API handlers and workflow steps alike.

use std::sync::Arc;

use crate::blobs::ObjectStore;
use crate::config::Config;
use crate::dataplane::DataPlane;
use crate::error::Error;
use crate::keys::KeyService;
use crate::registry::Registry;
use crate::tenant_schema::TenantSchema;

#[derive(Clone)]
pub struct Context {
    pub registry: Registry,
    pub dataplane: Arc<DataPlane>,
    pub keys: Arc<dyn KeyService>,
    pub objects: Arc<dyn ObjectStore>,
    pub config: Arc<Config>,
    /// Point-in-time restores (`[pitr]`, with pgBackRest installed); `None`: off.
    pub pitr: Option<Arc<crate::pitr::Pitr>>,
}

impl Context {
    /// The tenant schema with every version the registry holds: versions another replica
    /// recorded since this one started are loaded first (one cheap query when there are
    /// none). Whatever migrates a container to a version asks here.
    pub async fn tenant_schema(&self) -> Result<Arc<TenantSchema>, Error> {
        let known = self.dataplane.tenant_schema();
        if self.registry.latest_tenant_schema_version().await? > known.latest() {
            self.dataplane
                .grow_tenant_schema(self.registry.tenant_schema().await?);
        }
        Ok(self.dataplane.tenant_schema())
    }
}
