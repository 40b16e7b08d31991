//! Chunked authenticated encryption of a byte stream: AES-256-GCM in the STREAM construction
//! (Hoang, Reyhanitabar, Rogaway, Vizár 2015; `aead::stream`, big-endian 32-bit counter and a
//! last-chunk flag in the nonce). Memory stays at one chunk whatever the stream's length, and
//! the reader detects every change an attacker with the ciphertext can make: an altered,
//! dropped, duplicated or reordered chunk fails authentication, and so does a stream cut at a
//! chunk boundary, because only the real last chunk is sealed as last.
//!
//! Layout: a 19-byte header, then the chunks.
//!
//! ```text
//! header   "TDXS" | version u8 = 1 | reserved [0; 3] | chunk size u32 BE | nonce prefix [u8; 7]
//! chunk i  AES-256-GCM(key, nonce = prefix | i u32 BE | last u8, aad = header | context)
//!          chunk-size bytes of plaintext each, + 16 bytes of tag; the last holds 0..=chunk size
//! ```
//!
//! The associated data binds every chunk to the header (chunk size, nonce prefix) and to a
//! caller-chosen `context` (e.g. the export's id), so chunks cannot be moved between streams
//! even under the same key. A key must seal one stream only (exports use a fresh data key
//! each); the random prefix is a second line of defence, not a licence to reuse keys.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::aead::{KeyInit, Payload};
use rand::RngCore;

const MAGIC: &[u8; 4] = b"TDXS";
const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 19;
const TAG_LEN: usize = 16;
const NONCE_PREFIX_LEN: usize = 7;

/// Plaintext bytes per chunk written by default.
pub const DEFAULT_CHUNK: usize = 64 * 1024;
/// Largest chunk a reader accepts, so a forged header cannot make it buffer without bound.
pub const MAX_CHUNK: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("not a sealed tenantd stream (bad header)")]
    BadHeader,
    #[error("sealed stream version {0} is not supported")]
    UnsupportedVersion(u8),
    #[error(
        "chunk {0} failed authentication: wrong key or context, or the data was altered, \
         reordered or cut"
    )]
    Tampered(u64),
    #[error("sealed stream is truncated")]
    Truncated,
}

fn header(chunk: usize, prefix: &[u8; NONCE_PREFIX_LEN]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.push(VERSION);
    h.extend_from_slice(&[0; 3]);
    h.extend_from_slice(&(chunk as u32).to_be_bytes());
    h.extend_from_slice(prefix);
    h
}

fn aad(header: &[u8], context: &[u8]) -> Vec<u8> {
    [header, context].concat()
}

/// Seals a stream: feed plaintext with [`Sealer::update`], end with [`Sealer::finish`]; the
/// concatenated outputs are the sealed stream (header included).
pub struct Sealer {
    enc: EncryptorBE32<Aes256Gcm>,
    aad: Vec<u8>,
    chunk: usize,
    buf: Vec<u8>,
    header: Option<Vec<u8>>,
}

impl Sealer {
    pub fn new(key: &[u8; 32], context: &[u8], chunk: usize) -> Sealer {
        assert!(chunk > 0 && chunk <= MAX_CHUNK, "chunk size out of range");
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        rand::rng().fill_bytes(&mut prefix);
        let header = header(chunk, &prefix);
        let aead = Aes256Gcm::new(key.into());
        Sealer {
            enc: EncryptorBE32::from_aead(aead, (&prefix).into()),
            aad: aad(&header, context),
            chunk,
            buf: Vec::with_capacity(chunk),
            header: Some(header),
        }
    }

    /// Takes more plaintext; returns the sealed bytes ready so far. A full chunk is sealed
    /// only once more data follows it, since the last chunk is sealed differently.
    pub fn update(&mut self, mut data: &[u8]) -> Vec<u8> {
        let mut out = self.header.take().unwrap_or_default();
        while !data.is_empty() {
            if self.buf.len() == self.chunk {
                let sealed = self
                    .enc
                    .encrypt_next(Payload {
                        msg: &self.buf,
                        aad: &self.aad,
                    })
                    .expect("AES-GCM seals any chunk below its size limit");
                out.extend_from_slice(&sealed);
                self.buf.clear();
            }
            let take = (self.chunk - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        out
    }

    /// Seals what is left as the last chunk (possibly empty).
    pub fn finish(self) -> Vec<u8> {
        let mut out = self.header.unwrap_or_default();
        let sealed = self
            .enc
            .encrypt_last(Payload {
                msg: &self.buf,
                aad: &self.aad,
            })
            .expect("AES-GCM seals any chunk below its size limit");
        out.extend_from_slice(&sealed);
        out
    }
}

/// Opens a sealed stream: feed it with [`Opener::update`] in pieces of any size, end with
/// [`Opener::finish`]. Plaintext is released chunk by chunk, each only after it authenticated;
/// a consumer must still treat the whole as valid only once `finish` succeeded.
pub struct Opener {
    key: [u8; 32],
    context: Vec<u8>,
    body: Option<Body>,
    buf: Vec<u8>,
}

struct Body {
    dec: DecryptorBE32<Aes256Gcm>,
    aad: Vec<u8>,
    sealed_chunk: usize,
    index: u64,
}

impl Opener {
    pub fn new(key: &[u8; 32], context: &[u8]) -> Opener {
        Opener {
            key: *key,
            context: context.to_vec(),
            body: None,
            buf: Vec::new(),
        }
    }

    fn start(&mut self) -> Result<(), StreamError> {
        let h = &self.buf[..HEADER_LEN];
        if &h[..4] != MAGIC {
            return Err(StreamError::BadHeader);
        }
        if h[4] != VERSION {
            return Err(StreamError::UnsupportedVersion(h[4]));
        }
        let chunk = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
        if h[5..8] != [0; 3] || chunk == 0 || chunk > MAX_CHUNK {
            return Err(StreamError::BadHeader);
        }
        let prefix: [u8; NONCE_PREFIX_LEN] = h[12..19].try_into().expect("7 bytes");
        let aead = Aes256Gcm::new((&self.key).into());
        self.body = Some(Body {
            dec: DecryptorBE32::from_aead(aead, (&prefix).into()),
            aad: aad(h, &self.context),
            sealed_chunk: chunk + TAG_LEN,
            index: 0,
        });
        self.buf.drain(..HEADER_LEN);
        Ok(())
    }

    /// Takes more sealed bytes; returns the plaintext of the chunks that authenticated.
    pub fn update(&mut self, data: &[u8]) -> Result<Vec<u8>, StreamError> {
        self.buf.extend_from_slice(data);
        if self.body.is_none() {
            if self.buf.len() < HEADER_LEN {
                return Ok(Vec::new());
            }
            self.start()?;
        }
        let body = self.body.as_mut().expect("started");
        let mut out = Vec::new();
        // Keep at least one sealed chunk back: it may be the last, opened by `finish`.
        let mut at = 0;
        while self.buf.len() - at > body.sealed_chunk {
            let piece = &self.buf[at..at + body.sealed_chunk];
            let plain = body
                .dec
                .decrypt_next(Payload {
                    msg: piece,
                    aad: &body.aad,
                })
                .map_err(|_| StreamError::Tampered(body.index))?;
            out.extend_from_slice(&plain);
            body.index += 1;
            at += body.sealed_chunk;
        }
        self.buf.drain(..at);
        Ok(out)
    }

    /// Opens the last chunk and checks nothing follows it.
    pub fn finish(self) -> Result<Vec<u8>, StreamError> {
        let body = self.body.ok_or(StreamError::Truncated)?;
        if self.buf.len() < TAG_LEN {
            return Err(StreamError::Truncated);
        }
        body.dec
            .decrypt_last(Payload {
                msg: &self.buf,
                aad: &body.aad,
            })
            .map_err(|_| StreamError::Tampered(body.index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn seal(data: &[u8], chunk: usize, piece: usize) -> Vec<u8> {
        let mut s = Sealer::new(&KEY, b"export-1", chunk);
        let mut out = Vec::new();
        for p in data.chunks(piece.max(1)) {
            out.extend(s.update(p));
        }
        out.extend(s.finish());
        out
    }

    fn open(
        sealed: &[u8],
        key: &[u8; 32],
        context: &[u8],
        piece: usize,
    ) -> Result<Vec<u8>, StreamError> {
        let mut o = Opener::new(key, context);
        let mut out = Vec::new();
        for p in sealed.chunks(piece.max(1)) {
            out.extend(o.update(p)?);
        }
        out.extend(o.finish()?);
        Ok(out)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_every_boundary_and_piece_size() {
        for n in [0, 1, 15, 16, 17, 31, 32, 33, 64, 100] {
            for piece in [1, 3, 16, 1000] {
                let d = data(n);
                let sealed = seal(&d, 16, piece);
                let chunks = n.div_ceil(16).max(1);
                assert_eq!(sealed.len(), HEADER_LEN + n + chunks * TAG_LEN, "n={n}");
                for read_piece in [1, 7, 35, 4096] {
                    assert_eq!(open(&sealed, &KEY, b"export-1", read_piece).unwrap(), d);
                }
            }
        }
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let sealed = seal(&data(50), 16, 50);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(open(&bad, &KEY, b"export-1", 64).is_err(), "byte {i}");
        }
    }

    #[test]
    fn wrong_key_context_truncation_reordering_and_trailing_data_fail() {
        let sealed = seal(&data(64), 16, 64); // four chunks, the fourth sealed as last
        let step = 16 + TAG_LEN;
        assert_eq!(
            open(&sealed, &[8; 32], b"export-1", 64),
            Err(StreamError::Tampered(0))
        );
        assert_eq!(
            open(&sealed, &KEY, b"export-2", 64),
            Err(StreamError::Tampered(0))
        );
        // Cut at a chunk boundary: the remaining last chunk was not sealed as last.
        let cut = &sealed[..HEADER_LEN + 3 * step];
        assert!(matches!(
            open(cut, &KEY, b"export-1", 64),
            Err(StreamError::Tampered(_))
        ));
        assert_eq!(
            open(&sealed[..10], &KEY, b"export-1", 64),
            Err(StreamError::Truncated)
        );
        // Two chunks swapped.
        let mut swapped = sealed.clone();
        let (a, b) = (HEADER_LEN, HEADER_LEN + step);
        let first = sealed[a..a + step].to_vec();
        swapped.copy_within(b..b + step, a);
        swapped[b..b + step].copy_from_slice(&first);
        assert_eq!(
            open(&swapped, &KEY, b"export-1", 64),
            Err(StreamError::Tampered(0))
        );
        // Anything after the last chunk.
        let mut longer = sealed.clone();
        longer.extend_from_slice(&[0; 5]);
        assert!(open(&longer, &KEY, b"export-1", 64).is_err());
        assert_eq!(
            open(b"nope, not a stream..", &KEY, b"", 64),
            Err(StreamError::BadHeader)
        );
    }

    #[test]
    fn two_seals_of_the_same_data_differ() {
        assert_ne!(seal(&data(40), 16, 40), seal(&data(40), 16, 40));
    }
}
