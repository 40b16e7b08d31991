//! Deletion certificates: what a verified deletion proves, in a form an auditor checks offline
//! with nothing but the service's public key (`tenantctl certificate verify`).
//!
//! The document is one JSON object, `{"certificate": {…}, "signature": {…}}`, written in
//! canonical form: object keys sorted by their UTF-8 bytes, no insignificant whitespace,
//! integers only, strings as serde_json escapes them; one trailing newline. The signature is
//! ECDSA P-256 / SHA-256 (ASN.1 DER, base64) over the message
//! `tenantd-deletion-certificate/1 sha256:<hex of SHA-256 of the canonical certificate>`
//! (a digest, because a key service signs at most 4 KiB; the prefix keeps a certificate
//! signature from ever passing for a manifest's).
//!
//! [`verify`] accepts a document only if every byte is accounted for: it must be exactly the
//! canonical form of what it parses to, the signature fields must be exactly those expected,
//! the key id must be the one the certificate names, and the signature must verify. So one
//! changed byte anywhere fails verification.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::dataplane::erasure::{CatalogCheck, TableCount};
use crate::keys::{KeyError, verify_signature};

pub const FORMAT: &str = "tenantd-deletion-certificate/1";
pub const ALGORITHM: &str = "ECDSA_P256_SHA256";

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("not a deletion certificate: {0}")]
    Malformed(String),
    #[error("the document is not in canonical form: it was changed after signing")]
    NotCanonical,
    #[error("the signature does not verify: the certificate was changed or signed by another key")]
    BadSignature,
    #[error(transparent)]
    Key(#[from] KeyError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub format: String,
    pub certificate_id: String,
    pub tenant: TenantFacts,
    pub request: RequestFacts,
    /// RFC 3339 times: the deletion operation's start and end, and the certificate's issue.
    pub started_at: String,
    pub completed_at: String,
    pub evidence: Evidence,
    pub verification: Verification,
    /// What the deletion does not reach, and when that expires.
    pub scope: Vec<String>,
    pub signing_key_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFacts {
    pub id: String,
    pub slug: String,
    pub tier: String,
    pub cluster: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFacts {
    pub reason: String,
    pub requested_by: String,
    pub ticket: String,
    pub request_id: String,
    pub operation: String,
    pub requested_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Every table that held rows of the tenant when the deletion counted them (before it
    /// deleted anything), with those counts.
    pub rows_deleted: Vec<TableCount>,
    /// Containers dropped whole (`cluster/database[/schema]`) and roles dropped.
    pub dropped: Vec<String>,
    pub objects: ObjectEvidence,
    pub key: KeyEvidence,
    /// Exports of the tenant, unreadable once its key is gone (crypto-shredded) and whose
    /// objects were deleted.
    pub exports: Vec<String>,
    /// A final export kept for handing over to the customer, if one was requested.
    pub final_export: Option<FinalExportFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectEvidence {
    pub prefix: String,
    pub deleted: u64,
    pub bytes: u64,
    pub incomplete_uploads_aborted: u64,
    /// SHA-256 (hex) of the deleted keys, sorted, each followed by `\n`.
    pub keys_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEvidence {
    pub key_id: String,
    pub state: String,
    /// When the key service destroys the key (RFC 3339).
    pub deletion_date: String,
    pub pending_window_days: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalExportFacts {
    pub export: String,
    pub object_uri: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub encrypted_with: String,
}

/// The independent scan made after everything was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    pub verified_at: String,
    /// The query every table below was counted with (`$1`: the tenant id).
    pub row_query: String,
    pub tables: Vec<TableCount>,
    pub catalog: Vec<CatalogCheck>,
    pub objects: ObjectCheck,
    pub key: KeyCheck,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectCheck {
    pub prefix: String,
    pub objects_listed: u64,
    pub incomplete_uploads_listed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCheck {
    pub key_id: String,
    pub state: String,
}

/// The signature part of the document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureBlock {
    algorithm: String,
    key_id: String,
    value: String,
}

/// The canonical bytes of a JSON value (see the module doc).
pub fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            out.push(b'{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(k).expect("a string serialises"));
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => out.extend(serde_json::to_vec(scalar).expect("a scalar serialises")),
    }
}

/// What the key service signs for `certificate` (canonical bytes).
pub fn signed_message(certificate: &[u8]) -> Vec<u8> {
    format!(
        "{FORMAT} sha256:{}",
        hex::encode(Sha256::digest(certificate))
    )
    .into_bytes()
}

impl Certificate {
    /// The canonical bytes of the certificate alone: what is signed (through its digest).
    pub fn canonical(&self) -> Vec<u8> {
        canonical(&serde_json::to_value(self).expect("a certificate serialises"))
    }

    /// The message to sign.
    pub fn message(&self) -> Vec<u8> {
        signed_message(&self.canonical())
    }

    /// The document handed to compliance staff: the certificate and its signature, canonical,
    /// newline-terminated.
    pub fn document(&self, signature_der: &[u8]) -> Vec<u8> {
        let doc = serde_json::json!({
            "certificate": self,
            "signature": SignatureBlock {
                algorithm: ALGORITHM.to_owned(),
                key_id: self.signing_key_id.clone(),
                value: base64::engine::general_purpose::STANDARD.encode(signature_der),
            },
        });
        let mut out = canonical(&doc);
        out.push(b'\n');
        out
    }
}

/// Checks a certificate document offline against the signing key's public key
/// (SubjectPublicKeyInfo DER); returns the certificate it proves.
pub fn verify(document: &[u8], spki_der: &[u8]) -> Result<Certificate, CertificateError> {
    let body = document.strip_suffix(b"\n").unwrap_or(document);
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| CertificateError::Malformed(format!("not JSON: {e}")))?;
    if canonical(&value) != body {
        return Err(CertificateError::NotCanonical);
    }
    let Value::Object(mut doc) = value else {
        return Err(CertificateError::Malformed("not a JSON object".into()));
    };
    let fields = doc.len();
    let (Some(cert), Some(sig), 2) = (doc.remove("certificate"), doc.remove("signature"), fields)
    else {
        return Err(CertificateError::Malformed(
            "expected exactly the fields certificate and signature".into(),
        ));
    };
    let signed = canonical(&cert);
    let certificate: Certificate = serde_json::from_value(cert)
        .map_err(|e| CertificateError::Malformed(format!("certificate: {e}")))?;
    let sig: SignatureBlock = serde_json::from_value(sig)
        .map_err(|e| CertificateError::Malformed(format!("signature: {e}")))?;
    if certificate.format != FORMAT {
        return Err(CertificateError::Malformed(format!(
            "format {:?}, expected {FORMAT:?}",
            certificate.format
        )));
    }
    if sig.algorithm != ALGORITHM || sig.key_id != certificate.signing_key_id {
        return Err(CertificateError::BadSignature);
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let der = b64
        .decode(&sig.value)
        .map_err(|_| CertificateError::BadSignature)?;
    // Only the one encoding of these bytes is accepted.
    if b64.encode(&der) != sig.value {
        return Err(CertificateError::BadSignature);
    }
    match verify_signature(spki_der, &signed_message(&signed), &der) {
        Ok(()) => Ok(certificate),
        Err(KeyError::BadSignature) => Err(CertificateError::BadSignature),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_sorts_keys_and_drops_whitespace() {
        let v: Value =
            serde_json::from_str(r#"{ "b": [1, {"z": "é\n", "a": null}], "a": true }"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical(&v)).unwrap(),
            r#"{"a":true,"b":[1,{"a":null,"z":"é\n"}]}"#
        );
    }

    fn sample() -> Certificate {
        let counted = |table: &str, rows| TableCount {
            cluster: "main".into(),
            database: "tenants".into(),
            schema: "pool".into(),
            table: table.into(),
            rows,
        };
        Certificate {
            format: FORMAT.into(),
            certificate_id: "c1".into(),
            tenant: TenantFacts {
                id: "t1".into(),
                slug: "acme".into(),
                tier: "pool".into(),
                cluster: "main".into(),
            },
            request: RequestFacts {
                reason: "customer exit".into(),
                requested_by: "dpo@example.com".into(),
                ticket: "GDPR-1".into(),
                request_id: String::new(),
                operation: "operations/o1".into(),
                requested_at: "2026-01-01T00:00:00Z".into(),
            },
            started_at: "2026-01-01T00:00:00Z".into(),
            completed_at: "2026-01-01T00:00:05Z".into(),
            evidence: Evidence {
                rows_deleted: vec![counted("patients", 3)],
                dropped: vec![],
                objects: ObjectEvidence {
                    prefix: "tenants/t1".into(),
                    deleted: 1,
                    bytes: 10,
                    incomplete_uploads_aborted: 0,
                    keys_sha256: "00".into(),
                },
                key: KeyEvidence {
                    key_id: "k1".into(),
                    state: "pending_deletion".into(),
                    deletion_date: "2026-01-31T00:00:00Z".into(),
                    pending_window_days: 30,
                },
                exports: vec![],
                final_export: None,
            },
            verification: Verification {
                verified_at: "2026-01-01T00:00:04Z".into(),
                row_query: "q".into(),
                tables: vec![counted("patients", 0)],
                catalog: vec![],
                objects: ObjectCheck {
                    prefix: "tenants/t1".into(),
                    objects_listed: 0,
                    incomplete_uploads_listed: 0,
                },
                key: KeyCheck {
                    key_id: "k1".into(),
                    state: "pending_deletion".into(),
                },
            },
            scope: vec!["backups".into()],
            signing_key_id: "signer".into(),
        }
    }

    /// Every single changed byte of a signed document fails verification.
    #[test]
    fn one_changed_byte_anywhere_fails() {
        use p256::ecdsa::SigningKey;
        use p256::ecdsa::signature::Signer;
        use p256::pkcs8::EncodePublicKey;
        let key = SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
        let spki = key.verifying_key().to_public_key_der().unwrap().into_vec();
        let cert = sample();
        let sig: p256::ecdsa::Signature = key.sign(&cert.message());
        let doc = cert.document(sig.to_der().as_bytes());
        assert_eq!(verify(&doc, &spki).unwrap(), cert);
        for i in 0..doc.len() {
            for flip in [0x01u8, 0x20] {
                let mut bad = doc.clone();
                bad[i] ^= flip;
                assert!(verify(&bad, &spki).is_err(), "byte {i} ^ {flip:#x} passed");
            }
        }
        // Another key's signature does not pass.
        let other = SigningKey::from_bytes(&[9u8; 32].into()).unwrap();
        let sig: p256::ecdsa::Signature = other.sign(&cert.message());
        assert!(matches!(
            verify(&cert.document(sig.to_der().as_bytes()), &spki),
            Err(CertificateError::BadSignature)
        ));
    }
}
