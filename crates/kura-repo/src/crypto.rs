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

/// Upper bounds on the argon2id parameters kura will run. A key file is read before anything
/// authenticates it, so its parameters are hostile input: without bounds a flipped bit could
/// ask for terabytes of memory or a billion passes (a hang). The bounds are far above any
/// sensible setting (the default is 64 MiB × 3 passes) and keep the worst case to seconds.
pub const KDF_MAX_MEMORY_KIB: u32 = 1024 * 1024;
/// At most this many passes.
pub const KDF_MAX_ITERATIONS: u32 = 32;
/// At most this many lanes.
pub const KDF_MAX_PARALLELISM: u32 = 16;
/// Memory × passes at most this (KiB·passes: 4 GiB·passes, a few seconds on one core).
pub const KDF_MAX_WORK: u64 = 4 * 1024 * 1024;

impl KdfParams {
    /// Why these parameters are outside the bounds kura runs, or `None`.
    pub fn problem(&self) -> Option<String> {
        let KdfParams {
            memory_kib: m,
            iterations: t,
            parallelism: p,
        } = *self;
        if !(1..=KDF_MAX_PARALLELISM).contains(&p) {
            Some(format!("parallelism {p} outside 1..={KDF_MAX_PARALLELISM}"))
        } else if t == 0 || t > KDF_MAX_ITERATIONS {
            Some(format!("iterations {t} outside 1..={KDF_MAX_ITERATIONS}"))
        } else if m < 8 * p || m > KDF_MAX_MEMORY_KIB {
            Some(format!(
                "memory {m} KiB outside {}..={KDF_MAX_MEMORY_KIB} KiB",
                8 * p
            ))
        } else if m as u64 * t as u64 > KDF_MAX_WORK {
            Some(format!(
                "memory × iterations = {} KiB·passes exceeds {KDF_MAX_WORK}",
                m as u64 * t as u64
            ))
        } else {
            None
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
        if let Some(p) = params.problem() {
            return Err(Error::InvalidInput(format!("argon2id parameters: {p}")));
        }
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
    /// A key file of another version is [`Error::Unsupported`]; one that cannot be what kura
    /// wrote (bad hex, wrong lengths, KDF parameters outside the bounds) is
    /// [`Error::Corrupt`] — checked before the KDF runs.
    pub fn open(&self, password: &[u8]) -> Result<Option<MasterKey>> {
        if self.version != 1 || self.kdf != "argon2id" {
            return Err(Error::Unsupported(format!(
                "key file version {} with kdf {}",
                self.version, self.kdf
            )));
        }
        let damaged = |d: String| Error::corrupt("key file", d);
        let salt = hex::decode(&self.salt).map_err(|_| damaged("bad salt (not hex)".into()))?;
        let data = hex::decode(&self.data).map_err(|_| damaged("bad data (not hex)".into()))?;
        if !(8..=64).contains(&salt.len()) {
            return Err(damaged(format!("salt of {} bytes", salt.len())));
        }
        if data.len() != 32 + OVERHEAD {
            return Err(damaged(format!("wrapped key of {} bytes", data.len())));
        }
        if let Some(p) = self.params.problem() {
            return Err(damaged(format!("argon2id parameters: {p}")));
        }
        let kek = derive_kek(password, &salt, self.params)?;
        let wrapper = MasterKey::from_secret(kek);
        match wrapper.open(KEY_FILE_AAD, &data) {
            Ok(secret) => {
                let secret: [u8; 32] = secret
                    .try_into()
                    .map_err(|_| damaged("wrapped secret has wrong length".into()))?;
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
    fn damaged_future_and_absurd_key_files_are_refused_before_the_kdf_runs() {
        let k = MasterKey::generate().unwrap();
        let good = KeyFile::create(&k, b"pw", FAST).unwrap();
        let mut future = good.clone();
        future.version = 2;
        assert!(matches!(future.open(b"pw"), Err(Error::Unsupported(_))));
        let mut bad_hex = good.clone();
        bad_hex.data.replace_range(0..1, "z");
        assert!(matches!(bad_hex.open(b"pw"), Err(Error::Corrupt { .. })));
        let mut short = good.clone();
        short.data.truncate(10);
        assert!(matches!(short.open(b"pw"), Err(Error::Corrupt { .. })));
        // Absurd parameters: refused at once (no hang, no huge allocation).
        for params in [
            KdfParams {
                memory_kib: u32::MAX,
                ..FAST
            },
            KdfParams {
                iterations: u32::MAX,
                ..FAST
            },
            KdfParams {
                parallelism: u32::MAX,
                ..FAST
            },
            KdfParams {
                iterations: 0,
                ..FAST
            },
            KdfParams {
                memory_kib: KDF_MAX_MEMORY_KIB,
                iterations: KDF_MAX_ITERATIONS,
                parallelism: 1,
            },
        ] {
            let mut kf = good.clone();
            kf.params = params;
            let t = std::time::Instant::now();
            let r = kf.open(b"pw");
            assert!(matches!(r, Err(Error::Corrupt { .. })), "{params:?}: {r:?}");
            assert!(t.elapsed() < std::time::Duration::from_secs(1));
            assert!(KeyFile::create(&k, b"pw", params).is_err());
        }
        assert!(KdfParams::default().problem().is_none());
        assert!(FAST.problem().is_none());
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
