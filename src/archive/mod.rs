//! The export archive: how one tenant's dump is compressed, sealed and described.
//!
//! ```text
//! plain SQL (docs/export.md) ─ sha256 ─▶ zstd ─▶ aead_stream (AES-256-GCM STREAM) ─ sha256 ─▶ object
//! ```
//!
//! - [`ArchiveWriter`] and [`ArchiveReader`] are the two directions, synchronous and
//!   incremental: memory stays at a compression window plus one chunk, whatever the size.
//! - [`manifest::Manifest`] describes an export: tables and row counts, both digests, the
//!   wrapped data key and the encryption context. It is signed by the service signing key;
//!   the reader trusts nothing in an export before the manifest's signature verified.
//! - [`layout::ExportKeys`] names an export's objects; [`verified::VerifiedExport`] is an
//!   export read back with its manifest checked against the signature and the registry.

pub mod aead_stream;
pub mod layout;
pub mod manifest;
pub mod verified;

use std::io::Write;

use sha2::{Digest, Sha256};

use aead_stream::{Opener, Sealer, StreamError};

/// zstd level for exports. Level 1 rather than the CLI's default 3: on SQL text it compresses
/// a few percent less but much faster, which keeps an export (which also hashes and
/// encrypts) at pg_dump's pace (see the export benchmark, which prints both sizes).
pub const ZSTD_LEVEL: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Sealed(#[from] StreamError),
    #[error("decompression failed: {0}")]
    Compression(String),
    #[error("{what} sha256 is {actual}, the manifest says {expected}: the export was altered")]
    Checksum {
        what: &'static str,
        expected: String,
        actual: String,
    },
}

/// Size and sha256 of a byte stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Digest256 {
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Default)]
struct Hashing {
    sha: Sha256,
    bytes: u64,
}

impl Hashing {
    fn feed(&mut self, data: &[u8]) {
        self.sha.update(data);
        self.bytes += data.len() as u64;
    }
    fn done(self) -> Digest256 {
        Digest256 {
            bytes: self.bytes,
            sha256: hex::encode(self.sha.finalize()),
        }
    }
}

/// Where zstd output goes on the way out: sealed, hashed, buffered for the caller.
struct SealSink {
    sealer: Sealer,
    hash: Hashing,
    out: Vec<u8>,
}

impl Write for SealSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let sealed = self.sealer.update(data);
        self.hash.feed(&sealed);
        self.out.extend_from_slice(&sealed);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Plaintext in, sealed archive bytes out.
pub struct ArchiveWriter {
    zstd: zstd::stream::write::Encoder<'static, SealSink>,
    plain: Hashing,
}

impl ArchiveWriter {
    /// `context` is bound into every chunk (the export's encryption context bytes).
    pub fn new(key: &[u8; 32], context: &[u8]) -> std::io::Result<Self> {
        let sink = SealSink {
            sealer: Sealer::new(key, context, aead_stream::DEFAULT_CHUNK),
            hash: Hashing::default(),
            out: Vec::new(),
        };
        Ok(ArchiveWriter {
            zstd: zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL)?,
            plain: Hashing::default(),
        })
    }

    pub fn write(&mut self, plain: &[u8]) -> std::io::Result<()> {
        self.plain.feed(plain);
        self.zstd.write_all(plain)
    }

    /// The sealed bytes produced so far.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.zstd.get_mut().out)
    }

    /// Ends the stream: the remaining sealed bytes, and the plaintext and ciphertext digests.
    pub fn finish(self) -> std::io::Result<(Vec<u8>, Digest256, Digest256)> {
        let mut sink = self.zstd.finish()?;
        let tail = sink.sealer.finish();
        sink.hash.feed(&tail);
        sink.out.extend_from_slice(&tail);
        Ok((sink.out, self.plain.done(), sink.hash.done()))
    }
}

/// Where decompressed output goes: hashed, buffered for the caller.
#[derive(Default)]
struct PlainSink {
    hash: Hashing,
    out: Vec<u8>,
}

impl Write for PlainSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.hash.feed(data);
        self.out.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sealed archive bytes in, plaintext out. Plaintext released before [`ArchiveReader::finish`]
/// is authenticated chunk by chunk but only complete (not cut short) once `finish` succeeded.
pub struct ArchiveReader {
    opener: Opener,
    cipher: Hashing,
    zstd: zstd::stream::write::Decoder<'static, PlainSink>,
}

fn decompression(e: std::io::Error) -> ArchiveError {
    ArchiveError::Compression(e.to_string())
}

impl ArchiveReader {
    pub fn new(key: &[u8; 32], context: &[u8]) -> Result<Self, ArchiveError> {
        Ok(ArchiveReader {
            opener: Opener::new(key, context),
            cipher: Hashing::default(),
            zstd: zstd::stream::write::Decoder::new(PlainSink::default()).map_err(decompression)?,
        })
    }

    pub fn write(&mut self, sealed: &[u8]) -> Result<Vec<u8>, ArchiveError> {
        self.cipher.feed(sealed);
        let compressed = self.opener.update(sealed)?;
        self.zstd.write_all(&compressed).map_err(decompression)?;
        Ok(std::mem::take(&mut self.zstd.get_mut().out))
    }

    /// A reader for the archive a verified manifest describes.
    pub fn for_manifest(m: &manifest::Manifest, data_key: &[u8; 32]) -> Result<Self, ArchiveError> {
        Self::new(data_key, &m.context_bytes())
    }

    /// Like [`Self::finish`], and checks both digests against the manifest.
    pub fn finish_checked(self, m: &manifest::Manifest) -> Result<Vec<u8>, ArchiveError> {
        let (tail, cipher, plain) = self.finish()?;
        check("archive", &m.ciphertext, &cipher)?;
        check("plaintext", &m.plaintext, &plain)?;
        Ok(tail)
    }

    /// The last plaintext, and the ciphertext and plaintext digests.
    pub fn finish(mut self) -> Result<(Vec<u8>, Digest256, Digest256), ArchiveError> {
        let compressed = self.opener.finish()?;
        self.zstd.write_all(&compressed).map_err(decompression)?;
        self.zstd.flush().map_err(decompression)?;
        let sink = self.zstd.into_inner();
        Ok((sink.out, self.cipher.done(), sink.hash.done()))
    }
}

/// Checks a digest against the manifest's.
pub fn check(
    what: &'static str,
    expected: &Digest256,
    actual: &Digest256,
) -> Result<(), ArchiveError> {
    if expected == actual {
        return Ok(());
    }
    Err(ArchiveError::Checksum {
        what,
        expected: format!("{} ({} bytes)", expected.sha256, expected.bytes),
        actual: format!("{} ({} bytes)", actual.sha256, actual.bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(plain: &[u8], key: &[u8; 32], ctx: &[u8]) -> (Vec<u8>, Digest256, Digest256) {
        let mut w = ArchiveWriter::new(key, ctx).unwrap();
        let mut out = Vec::new();
        for piece in plain.chunks(7777) {
            w.write(piece).unwrap();
            out.extend(w.take_output());
        }
        let (tail, p, c) = w.finish().unwrap();
        out.extend(tail);
        (out, p, c)
    }

    fn open(sealed: &[u8], key: &[u8; 32], ctx: &[u8]) -> Result<Vec<u8>, ArchiveError> {
        let mut r = ArchiveReader::new(key, ctx)?;
        let mut out = Vec::new();
        for piece in sealed.chunks(5000) {
            out.extend(r.write(piece)?);
        }
        let (tail, _, _) = r.finish()?;
        out.extend(tail);
        Ok(out)
    }

    #[test]
    fn round_trips_and_digests_both_sides() {
        let plain: Vec<u8> = (0..500_000u32)
            .flat_map(|i| (i % 1000).to_le_bytes())
            .collect();
        let (sealed, p, c) = seal(&plain, &[1; 32], b"ctx");
        assert!(sealed.len() < plain.len() / 2, "compressed before sealing");
        assert_eq!(p.bytes, plain.len() as u64);
        assert_eq!(c.bytes, sealed.len() as u64);
        assert_eq!(p.sha256, hex::encode(Sha256::digest(&plain)));
        assert_eq!(c.sha256, hex::encode(Sha256::digest(&sealed)));
        assert_eq!(open(&sealed, &[1; 32], b"ctx").unwrap(), plain);
    }

    #[test]
    fn wrong_key_context_or_a_flipped_byte_fail() {
        let plain = b"COPY public.patients FROM stdin;\n".repeat(10_000);
        let (sealed, _, _) = seal(&plain, &[1; 32], b"ctx");
        assert!(matches!(
            open(&sealed, &[2; 32], b"ctx"),
            Err(ArchiveError::Sealed(_))
        ));
        assert!(matches!(
            open(&sealed, &[1; 32], b"other"),
            Err(ArchiveError::Sealed(_))
        ));
        let mut flipped = sealed.clone();
        flipped[sealed.len() / 2] ^= 0x01;
        assert!(matches!(
            open(&flipped, &[1; 32], b"ctx"),
            Err(ArchiveError::Sealed(_))
        ));
        assert!(open(&sealed[..sealed.len() - 1], &[1; 32], b"ctx").is_err());
    }
}
