//! The export archive: how one tenant's dump is sealed for storage.
//!
//! Built so far: [`aead_stream`], the chunked authenticated encryption every export passes
//! through on its way to the object store. The dump format itself, compression and the signed
//! manifest come with the export workflow (issue 4).

pub mod aead_stream;
