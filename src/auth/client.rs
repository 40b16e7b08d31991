//! The client side of authentication, shared by `tenantctl`, the tests and the benchmarks:
//! a bearer-token interceptor and the channel type it produces.

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Adds `authorization: Bearer <token>` to every call (nothing when there is no token).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// Fails on a token that cannot be a header value; the error never contains the token.
    pub fn new(token: Option<&str>) -> Result<Self, InvalidToken> {
        token
            .map(|t| {
                let mut v: MetadataValue<_> = format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| InvalidToken)?;
                v.set_sensitive(true);
                Ok(v)
            })
            .transpose()
            .map(Bearer)
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(***)"
        } else {
            "Bearer(none)"
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the token contains characters that cannot be sent in a header")]
pub struct InvalidToken;

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A channel that authenticates every call.
pub type AuthChannel = InterceptedService<Channel, Bearer>;

pub fn with_token(channel: Channel, bearer: Bearer) -> AuthChannel {
    InterceptedService::new(channel, bearer)
}
