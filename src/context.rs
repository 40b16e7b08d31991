//! The service's shared dependencies, handed to API handlers and workflow steps alike.

use std::sync::Arc;

use crate::blobs::ObjectStore;
use crate::config::Config;
use crate::dataplane::DataPlane;
use crate::keys::KeyService;
use crate::registry::Registry;

#[derive(Clone)]
pub struct Context {
    pub registry: Registry,
    pub dataplane: Arc<DataPlane>,
    pub keys: Arc<dyn KeyService>,
    pub objects: Arc<dyn ObjectStore>,
    pub config: Arc<Config>,
}
