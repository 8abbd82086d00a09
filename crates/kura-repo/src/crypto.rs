//! Keys and authenticated encryption.
//!
//! # Key hierarchy
//! A repository has one random 32-byte *master secret*, created at `init` and never stored in
//! the clear. Each key file wraps it with a key-encryption key derived from a passphrase by
//! argon2id, so a repository can have several passphrases (`kura key add/remove`) without
//! re-encrypting data. From the master secret, BLAKE3's `derive_key` makes independent subkeys:
//! - the **data key** (XChaCha20-Poly1305) for every blob, pack header, index, snapshot,
//!   config and lock file;
//! - the **id key** for chunk ids (keyed BLAKE3), so ids reveal nothing about plaintext to
//!   someone without the key (no confirmation-of-file attacks);
//! - the **chunker seed**, which perturbs the FastCDC gear table so chunk boundaries (and thus
//!   sizes) do not fingerprint known files either.
//!
//! # Why XChaCha20-Poly1305
//! Nonces are 192-bit and random, so there is no practical limit on the number of messages per
//! key (AES-GCM's 96-bit random nonces cap a key at about 2³² messages, which a busy repository
//! could reach). It is fast without AES-NI and within a small factor of AES-GCM with it; zstd,
//! not the cipher, bounds throughput.
//!
//! # Sealed layout
//! `nonce (24) | ciphertext | tag (16)`. Associated data binds each message to its role: a blob
//! is bound to its type and id, a file to its magic, so nothing can be swapped undetected.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Decryption failed: wrong key, or the data was altered.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("authentication failed (wrong key or altered data)")]
pub struct AuthError;

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)
        .map_err(|e| Error::io("read random bytes", std::io::Error::other(e.to_string())))?;
    Ok(b)
}

/// The decrypted master key material of one repository.
#[derive(Clone)]
pub struct MasterKey {
    secret: [u8; 32],
    cipher: XChaCha20Poly1305,
    id_key: [u8; 32],
    chunker_seed: u64,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

impl MasterKey {
    /// A new random master key (at `init`).
    pub fn generate() -> Result<MasterKey> {
        Ok(MasterKey::from_secret(random_bytes::<32>()?))
    }

    pub fn from_secret(secret: [u8; 32]) -> MasterKey {
        let data_key = blake3::derive_key("kura 2026 v1 data encryption key", &secret);
        let id_key = blake3::derive_key("kura 2026 v1 chunk id key", &secret);
        let seed = blake3::derive_key("kura 2026 v1 chunker seed", &secret);
        let mut seed8 = [0u8; 8];
        seed8.copy_from_slice(&seed[..8]);
        MasterKey {
            secret,
            cipher: XChaCha20Poly1305::new(&data_key.into()),
            id_key,
            chunker_seed: u64::from_le_bytes(seed8),
        }
    }

    /// Chunk id of a plaintext: keyed BLAKE3.
    pub fn chunk_id(&self, data: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id_key, data).as_bytes())
    }

    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    /// Seal `plaintext`, returning `nonce | ciphertext | tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(OVERHEAD + plaintext.len());
        buf.extend_from_slice(&[0u8; NONCE_LEN]);
        buf.extend_from_slice(plaintext);
        self.seal_in_place(aad, &mut buf)?;
        Ok(buf)
    }

    /// Seal in place: `buf` holds `NONCE_LEN` bytes of room followed by the plaintext; on
    /// return it holds `nonce | ciphertext | tag`. Saves a copy on the backup hot path.
    pub fn seal_in_place(&self, aad: &[u8], buf: &mut Vec<u8>) -> Result<()> {
        let nonce_bytes = random_bytes::<NONCE_LEN>()?;
        buf[..NONCE_LEN].copy_from_slice(&nonce_bytes);
        let nonce = XNonce::from(nonce_bytes);
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce, aad, (&mut buf[NONCE_LEN..]).into())
            .map_err(|_| Error::InvalidInput("message too long to encrypt".into()))?;
        buf.extend_from_slice(tag.as_slice());
        Ok(())
    }

    /// Open a sealed message.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> std::result::Result<Vec<u8>, AuthError> {
        let mut buf = sealed.to_vec();
        self.open_in_place(aad, &mut buf)?;
        Ok(buf)
    }

    /// Open in place: on success `buf` holds the plaintext.
    pub fn open_in_place(
        &self,
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> std::result::Result<(), AuthError> {
        let plain = self.open_slice(aad, buf)?;
        let end = plain.end;
        buf.truncate(end);
        buf.drain(..NONCE_LEN);
        Ok(())
    }

    /// Open a sealed message in place inside a larger buffer (no copy); returns the range of
    /// `sealed` that now holds the plaintext. On failure `sealed` is unchanged.
    pub fn open_slice(
        &self,
        aad: &[u8],
        sealed: &mut [u8],
    ) -> std::result::Result<std::ops::Range<usize>, AuthError> {
        if sealed.len() < OVERHEAD {
            return Err(AuthError);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        let tag_at = sealed.len() - TAG_LEN;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&sealed[tag_at..]);
        self.cipher
            .decrypt_inout_detached(
                &XNonce::from(nonce),
                aad,
                (&mut sealed[NONCE_LEN..tag_at]).into(),
                &tag.into(),
            )
            .map_err(|_| AuthError)?;
        Ok(NONCE_LEN..tag_at)
    }
}

/// argon2id cost parameters of one key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about 0.2 s on a current core. OWASP's argon2id floor is
    /// 19 MiB/2 passes; this is well above it.
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

const KEY_FILE_AAD: &[u8] = b"kura key file v1";

/// A key file as stored (JSON): the master secret wrapped by a passphrase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    pub created: String,
    pub hostname: String,
    pub username: String,
    pub kdf: String,
    pub params: KdfParams,
    /// hex
    pub salt: String,
    /// hex of `nonce | wrapped secret | tag`
    pub data: String,
}

fn derive_kek(password: &[u8], salt: &[u8], params: KdfParams) -> Result<[u8; 32]> {
    let p = Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(32),
    )
    .map_err(|e| Error::InvalidInput(format!("invalid argon2 parameters: {e}")))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
        .hash_password_into(password, salt, &mut out)
        .map_err(|e| Error::InvalidInput(format!("argon2id failed: {e}")))?;
    Ok(out)
}

impl KeyFile {
    /// Wrap `key`'s secret with `password`.
    pub fn create(key: &MasterKey, password: &[u8], params: KdfParams) -> Result<KeyFile> {
        let salt = random_bytes::<32>()?;
        let kek = derive_kek(password, &salt, params)?;
        let wrapper = MasterKey::from_secret(kek);
        // The wrapper reuses MasterKey's sealing; its derived data key is a function of the KEK.
        let sealed = wrapper.seal(KEY_FILE_AAD, &key.secret)?;
        Ok(KeyFile {
            version: 1,
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            hostname: crate::util::hostname(),
            username: crate::util::username(),
            kdf: "argon2id".into(),
            params,
            salt: hex::encode(salt),
            data: hex::encode(sealed),
        })
    }

    /// Try to unwrap with `password`. `Ok(None)` means the password does not open this key.
    pub fn open(&self, password: &[u8]) -> Result<Option<MasterKey>> {
        if self.version != 1 || self.kdf != "argon2id" {
            return Err(Error::Unsupported(format!(
                "key file version {} with kdf {}",
                self.version, self.kdf
            )));
        }
        let salt = hex::decode(&self.salt).map_err(|_| Error::corrupt("key file", "bad salt"))?;
        let data = hex::decode(&self.data).map_err(|_| Error::corrupt("key file", "bad data"))?;
        let kek = derive_kek(password, &salt, self.params)?;
        let wrapper = MasterKey::from_secret(kek);
        match wrapper.open(KEY_FILE_AAD, &data) {
            Ok(secret) => {
                let secret: [u8; 32] = secret
                    .try_into()
                    .map_err(|_| Error::corrupt("key file", "wrapped secret has wrong length"))?;
                Ok(Some(MasterKey::from_secret(secret)))
            }
            Err(AuthError) => Ok(None),
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
            .map_err(|e| Error::InvalidInput(format!("serialize key file: {e}")))
    }

    pub fn from_bytes(b: &[u8]) -> Result<KeyFile> {
        serde_json::from_slice(b).map_err(|e| Error::corrupt("key file", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn seal_open_round_trip_and_aad_binding() {
        let k = MasterKey::generate().unwrap();
        let s = k.seal(b"aad", b"hello").unwrap();
        assert_eq!(s.len(), 5 + OVERHEAD);
        assert_eq!(k.open(b"aad", &s).unwrap(), b"hello");
        assert!(k.open(b"other", &s).is_err());
        let mut t = s.clone();
        t[NONCE_LEN] ^= 1;
        assert!(k.open(b"aad", &t).is_err());
        assert!(k.open(b"aad", &s[..10]).is_err());
        let other = MasterKey::generate().unwrap();
        assert!(other.open(b"aad", &s).is_err());
    }

    #[test]
    fn key_file_opens_only_with_its_password() {
        let k = MasterKey::generate().unwrap();
        let kf = KeyFile::create(&k, b"pw1", FAST).unwrap();
        let kf = KeyFile::from_bytes(&kf.to_bytes().unwrap()).unwrap();
        let opened = kf.open(b"pw1").unwrap().expect("opens");
        assert_eq!(opened.chunk_id(b"x"), k.chunk_id(b"x"));
        assert!(kf.open(b"pw2").unwrap().is_none());
    }

    #[test]
    fn chunk_ids_are_keyed() {
        let a = MasterKey::generate().unwrap();
        let b = MasterKey::generate().unwrap();
        assert_ne!(a.chunk_id(b"same"), b.chunk_id(b"same"));
        assert_eq!(a.chunk_id(b"same"), a.chunk_id(b"same"));
        assert_ne!(a.chunker_seed(), b.chunker_seed());
    }
}
