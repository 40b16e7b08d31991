//! `tenantd.v1.OperationService` (AIP-151).

use std::pin::Pin;
use std::time::Duration;

use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::audit::audited;
use super::convert;
use super::pb;
use crate::service::{Control, MAX_WAIT};
use crate::tenant::TenantRef;

pub struct OperationApi {
    control: Control,
}

impl OperationApi {
    pub fn new(control: Control) -> Self {
        OperationApi { control }
    }
}

type OperationStream = Pin<Box<dyn Stream<Item = Result<pb::Operation, Status>> + Send>>;

#[tonic::async_trait]
impl pb::operation_service_server::OperationService for OperationApi {
    async fn get_operation(
        &self,
        request: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let id = convert::resource_id("name", &request.into_inner().name, "operations")?;
        Ok(Response::new(self.control.get_operation(id).await?.into()))
    }

    async fn list_operations(
        &self,
        request: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let r = request.into_inner();
        let tenant = if r.tenant.is_empty() {
            None
        } else {
            Some(TenantRef::parse("tenant", &r.tenant)?)
        };
        let state = convert::operation_state_from(r.state)?;
        let (ops, next_page_token) = self
            .control
            .list_operations(tenant.as_ref(), state, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListOperationsResponse {
            operations: ops.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn cancel_operation(
        &self,
        request: Request<pb::CancelOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        audited(&self.control, request, |r| async move {
            let id = convert::resource_id("name", &r.name, "operations")?;
            Ok(self.control.cancel_operation(id).await?.into())
        })
        .await
    }

    async fn wait_operation(
        &self,
        request: Request<pb::WaitOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let r = request.into_inner();
        let id = convert::resource_id("name", &r.name, "operations")?;
        let timeout = match r.timeout_seconds {
            0 => MAX_WAIT,
            s => Duration::from_secs(s.into()),
        };
        Ok(Response::new(
            self.control.wait_operation(id, timeout).await?.into(),
        ))
    }

    type WatchOperationStream = OperationStream;

    async fn watch_operation(
        &self,
        request: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        let id = convert::resource_id("name", &request.into_inner().name, "operations")?;
        let rx = self.control.watch_operation(id).await?;
        let stream = ReceiverStream::new(rx).map(|r| r.map(Into::into).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}
