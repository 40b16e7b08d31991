//! One place that turns the `[aws]` configuration into the SDK's shared configuration, for
//! the KMS key service and the S3 object store alike.
//!
//! Credentials come from the SDK's standard chain unless `credentials_file` names one
//! shared-credentials file; they are never read from tenantd's own configuration, so they
//! cannot end up in it, in logs or in errors.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_sdk_kms::config::http::HttpResponse;

use crate::config::AwsConfig;

/// Times every KMS and S3 call and counts failures ([`crate::metrics`]), for every client
/// built with it: one interceptor rather than a wrapper at each call site.
#[derive(Debug)]
pub struct CloudMetrics;

#[derive(Debug, Clone, Copy)]
struct Started(std::time::Instant);

impl aws_smithy_types::config_bag::Storable for Started {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for CloudMetrics {
    fn name(&self) -> &'static str {
        "tenantd-metrics"
    }

    fn read_before_execution(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        cfg.interceptor_state()
            .store_put(Started(std::time::Instant::now()));
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let took = cfg
            .load::<Started>()
            .map(|s| s.0.elapsed())
            .unwrap_or_default();
        let (service, call) = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map(|m| (m.service().to_owned(), m.name().to_owned()))
            .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
        let failed = !matches!(context.output_or_error(), Some(Ok(_)));
        crate::metrics::cloud_call(&service, &call, took, failed);
        Ok(())
    }
}

pub async fn sdk_config(aws: &AwsConfig) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &aws.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &aws.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    if let Some(file) = &aws.credentials_file {
        loader = loader.profile_files(
            EnvConfigFiles::builder()
                .with_file(EnvConfigFileKind::Credentials, file)
                .include_default_config_file(false)
                .build(),
        );
    }
    if let Some(profile) = &aws.profile {
        loader = loader.profile_name(profile.clone());
    }
    loader.load().await
}

/// The message of an SDK error, with the service's error code when it returned one. Debug
/// output of SDK errors can carry request details; this keeps to code and message.
pub fn error_message<E>(e: &aws_sdk_kms::error::SdkError<E, HttpResponse>) -> String
where
    E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_kms::error::SdkError;
    match e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            match (err.code(), err.message()) {
                (Some(code), message) => format!("{code}: {}", message.unwrap_or("no message")),
                // No error document: the HTTP status is all there is.
                (None, _) => format!("HTTP {}", service.raw().status()),
            }
        }
        other => {
            // Timeouts, dispatch and construction failures: the source chain says what broke.
            let mut msg = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            msg
        }
    }
}
