//! AWS KMS key service (`aws-sdk-kms`), or any KMS-compatible endpoint.
//!
//! - Tenant keys: symmetric keys tagged `tenantd:tenant_id`, named by the alias
//!   `<alias_prefix><tenant id>`, with automatic yearly rotation on. Creation looks the alias
//!   up first, so a retried step finds the key it made. A crash between CreateKey and
//!   CreateAlias leaves an unaliased key with no data under it; losing an alias race schedules
//!   the loser's deletion at once.
//! - Service secrets: Encrypt/Decrypt under `service_key` with the encryption context.
//! - Signing: `signing_key`, an ECC_NIST_P256 SIGN_VERIFY key, ECDSA_SHA_256 over the raw
//!   message (KMS takes at most 4096 bytes raw; tenantd signs small documents only).
//!
//! The service and signing keys are created with their aliases on first start when the
//! aliases do not exist yet; production deployments usually create them (and their key
//! policies) up front.

use aws_sdk_kms::Client;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{
    DataKeySpec, KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec, Tag,
};
use chrono::{DateTime, Utc};
use tokio::sync::OnceCell;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{
    DataKey, EncryptionContext, KeyError, KeyInfo, KeyService, KeyState, PublicKey, Sealed,
    Signature, check_signable,
};

pub struct AwsKms {
    client: Client,
    alias_prefix: String,
    service_key: String,
    signing_key: String,
    public_key: OnceCell<PublicKey>,
}

fn error<E>(e: aws_sdk_kms::error::SdkError<E, HttpResponse>) -> KeyError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = crate::aws::error_message(&e);
    match e.code() {
        Some("NotFoundException") => KeyError::NotFound(message),
        Some("InvalidCiphertextException" | "IncorrectKeyException") => KeyError::Undecryptable,
        Some("DisabledException") => KeyError::Unusable {
            key_id: message,
            state: KeyState::Disabled,
        },
        Some("KMSInvalidStateException") => KeyError::Unusable {
            key_id: message,
            state: KeyState::PendingDeletion,
        },
        Some("AccessDeniedException" | "ValidationException" | "UnrecognizedClientException") => {
            KeyError::Config(message)
        }
        _ => KeyError::Unavailable(message),
    }
}

fn state(s: Option<&aws_sdk_kms::types::KeyState>) -> KeyState {
    use aws_sdk_kms::types::KeyState as K;
    match s {
        Some(K::Enabled) => KeyState::Enabled,
        Some(K::PendingDeletion | K::PendingReplicaDeletion) => KeyState::PendingDeletion,
        _ => KeyState::Disabled,
    }
}

fn info(meta: &aws_sdk_kms::types::KeyMetadata) -> KeyInfo {
    KeyInfo {
        key_id: meta.key_id().to_owned(),
        state: state(meta.key_state()),
        deletion_date: meta
            .deletion_date()
            .and_then(|d| DateTime::<Utc>::from_timestamp(d.secs(), d.subsec_nanos())),
    }
}

impl AwsKms {
    /// Connects and makes sure the service and signing keys exist.
    pub async fn connect(
        sdk: &aws_config::SdkConfig,
        alias_prefix: &str,
        service_key: &str,
        signing_key: &str,
    ) -> Result<Self, KeyError> {
        if !alias_prefix.starts_with("alias/") || !alias_prefix.ends_with('/') {
            return Err(KeyError::Config(format!(
                "alias_prefix {alias_prefix:?} must start with \"alias/\" and end with \"/\""
            )));
        }
        let kms = AwsKms {
            client: Client::from_conf(
                aws_sdk_kms::config::Builder::from(sdk)
                    .interceptor(crate::aws::CloudMetrics)
                    .build(),
            ),
            alias_prefix: alias_prefix.to_owned(),
            service_key: service_key.to_owned(),
            signing_key: signing_key.to_owned(),
            public_key: OnceCell::new(),
        };
        kms.ensure_alias(
            service_key,
            KeySpec::SymmetricDefault,
            KeyUsageType::EncryptDecrypt,
            None,
        )
        .await?;
        kms.ensure_alias(
            signing_key,
            KeySpec::EccNistP256,
            KeyUsageType::SignVerify,
            None,
        )
        .await?;
        Ok(kms)
    }

    async fn describe(&self, key: &str) -> Result<Option<KeyInfo>, KeyError> {
        match self.client.describe_key().key_id(key).send().await {
            Ok(out) => Ok(out.key_metadata().map(info)),
            Err(e) if e.code() == Some("NotFoundException") => Ok(None),
            Err(e) => Err(error(e)),
        }
    }

    /// The key behind `alias`, created (and the alias made) if the alias does not exist.
    /// Keys named by id or ARN must exist.
    async fn ensure_alias(
        &self,
        alias: &str,
        spec: KeySpec,
        usage: KeyUsageType,
        tenant_id: Option<Uuid>,
    ) -> Result<KeyInfo, KeyError> {
        if let Some(found) = self.describe(alias).await? {
            return Ok(found);
        }
        if !alias.starts_with("alias/") {
            return Err(KeyError::NotFound(alias.to_owned()));
        }
        let mut create = self
            .client
            .create_key()
            .key_spec(spec.clone())
            .key_usage(usage)
            .tags(tag("tenantd:managed", "true"))
            .description(match tenant_id {
                Some(t) => format!("tenantd tenant {t}"),
                None => format!("tenantd {alias}"),
            });
        if let Some(t) = tenant_id {
            create = create.tags(tag("tenantd:tenant_id", &t.to_string()));
        }
        let created = create.send().await.map_err(error)?;
        let key_id = created
            .key_metadata()
            .map(|m| m.key_id().to_owned())
            .ok_or_else(|| KeyError::Unavailable("CreateKey returned no key".into()))?;
        match self
            .client
            .create_alias()
            .alias_name(alias)
            .target_key_id(&key_id)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some("AlreadyExistsException") => {
                // Another replica won the race: retire our key, use theirs.
                let _ = self
                    .client
                    .schedule_key_deletion()
                    .key_id(&key_id)
                    .pending_window_in_days(7)
                    .send()
                    .await;
                return self
                    .describe(alias)
                    .await?
                    .ok_or_else(|| KeyError::NotFound(alias.to_owned()));
            }
            Err(e) => return Err(error(e)),
        }
        if spec == KeySpec::SymmetricDefault {
            self.client
                .enable_key_rotation()
                .key_id(&key_id)
                .send()
                .await
                .map_err(error)?;
        }
        tracing::info!(alias, key_id, "created kms key");
        let found = self.describe(&key_id).await?;
        found.ok_or(KeyError::NotFound(key_id))
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder()
        .tag_key(key)
        .tag_value(value)
        .build()
        .expect("tag key and value are set")
}

fn context_map(context: &EncryptionContext) -> std::collections::HashMap<String, String> {
    context
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn data_key(bytes: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let mut out = Zeroizing::new([0u8; 32]);
    if bytes.len() != out.len() {
        return Err(KeyError::Undecryptable);
    }
    out.copy_from_slice(bytes);
    Ok(out)
}

#[async_trait::async_trait]
impl KeyService for AwsKms {
    async fn seal(
        &self,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Sealed, KeyError> {
        let out = self
            .client
            .encrypt()
            .key_id(&self.service_key)
            .plaintext(Blob::new(plaintext))
            .set_encryption_context(Some(context_map(context)))
            .send()
            .await
            .map_err(error)?;
        Ok(Sealed {
            key_id: out.key_id().unwrap_or(&self.service_key).to_owned(),
            ciphertext: out
                .ciphertext_blob()
                .ok_or_else(|| KeyError::Unavailable("Encrypt returned no ciphertext".into()))?
                .as_ref()
                .to_vec(),
        })
    }

    async fn open(
        &self,
        sealed: &Sealed,
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, KeyError> {
        let out = self
            .client
            .decrypt()
            .key_id(&sealed.key_id)
            .ciphertext_blob(Blob::new(sealed.ciphertext.clone()))
            .set_encryption_context(Some(context_map(context)))
            .send()
            .await
            .map_err(error)?;
        Ok(out
            .plaintext()
            .ok_or(KeyError::Undecryptable)?
            .as_ref()
            .to_vec())
    }

    async fn create_tenant_key(&self, tenant_id: Uuid) -> Result<KeyInfo, KeyError> {
        self.ensure_alias(
            &format!("{}{tenant_id}", self.alias_prefix),
            KeySpec::SymmetricDefault,
            KeyUsageType::EncryptDecrypt,
            Some(tenant_id),
        )
        .await
    }

    async fn tenant_key(&self, tenant_id: Uuid) -> Result<Option<KeyInfo>, KeyError> {
        self.describe(&format!("{}{tenant_id}", self.alias_prefix))
            .await
    }

    async fn describe_key(&self, key_id: &str) -> Result<KeyInfo, KeyError> {
        self.describe(key_id)
            .await?
            .ok_or_else(|| KeyError::NotFound(key_id.to_owned()))
    }

    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<DataKey, KeyError> {
        let out = self
            .client
            .generate_data_key()
            .key_id(key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(context_map(context)))
            .send()
            .await
            .map_err(error)?;
        let plaintext = data_key(
            out.plaintext()
                .ok_or_else(|| KeyError::Unavailable("GenerateDataKey: no plaintext".into()))?
                .as_ref(),
        )?;
        Ok(DataKey {
            key_id: out.key_id().unwrap_or(key_id).to_owned(),
            plaintext,
            wrapped: out
                .ciphertext_blob()
                .ok_or_else(|| KeyError::Unavailable("GenerateDataKey: no ciphertext".into()))?
                .as_ref()
                .to_vec(),
        })
    }

    async fn decrypt_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let out = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(wrapped.to_vec()))
            .set_encryption_context(Some(context_map(context)))
            .send()
            .await
            .map_err(error)?;
        data_key(out.plaintext().ok_or(KeyError::Undecryptable)?.as_ref())
    }

    async fn schedule_key_deletion(
        &self,
        key_id: &str,
        pending_days: u32,
    ) -> Result<KeyInfo, KeyError> {
        let days = pending_days.clamp(7, 30) as i32;
        match self
            .client
            .schedule_key_deletion()
            .key_id(key_id)
            .pending_window_in_days(days)
            .send()
            .await
        {
            Ok(_) => {}
            // Already pending deletion: deleting is idempotent.
            Err(e) if e.code() == Some("KMSInvalidStateException") => {}
            Err(e) => return Err(error(e)),
        }
        self.describe_key(key_id).await
    }

    async fn sign(&self, message: &[u8]) -> Result<Signature, KeyError> {
        check_signable(message)?;
        let public = self.public_key().await?;
        let out = self
            .client
            .sign()
            .key_id(&public.key_id)
            .message(Blob::new(message))
            .message_type(MessageType::Raw)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
            .map_err(error)?;
        Ok(Signature {
            key_id: public.key_id,
            der: out
                .signature()
                .ok_or_else(|| KeyError::Unavailable("Sign returned no signature".into()))?
                .as_ref()
                .to_vec(),
        })
    }

    async fn public_key(&self) -> Result<PublicKey, KeyError> {
        self.public_key
            .get_or_try_init(|| async {
                let out = self
                    .client
                    .get_public_key()
                    .key_id(&self.signing_key)
                    .send()
                    .await
                    .map_err(error)?;
                Ok(PublicKey {
                    key_id: out
                        .key_id()
                        .ok_or_else(|| KeyError::Unavailable("GetPublicKey: no key id".into()))?
                        .to_owned(),
                    spki_der: out
                        .public_key()
                        .ok_or_else(|| KeyError::Unavailable("GetPublicKey: no key".into()))?
                        .as_ref()
                        .to_vec(),
                })
            })
            .await
            .cloned()
    }
}
