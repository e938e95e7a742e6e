//! Connector secrets encrypted at rest.
//!
//! A [`SecretBox`] holds the host's 256-bit secrets key and seals values
//! with XChaCha20-Poly1305 under a fresh random 24-byte nonce. A sealed
//! value is text: `v1:` followed by standard base64 of `nonce || ciphertext
//! || tag`.
//!
//! Every value is sealed for an *owner* string, the associated data (for
//! example `issuer/<id>/<secret-name>`): it is authenticated but not stored,
//! so a ciphertext copied into another row, or under another secret name,
//! does not open. The associated data is prefixed with a fixed domain and
//! version label, so values sealed here cannot be confused with any other
//! use of the same key.
//!
//! The key lives in a file in the data directory ([`SecretBox::load_or_create`]):
//! standard base64 of the 32 key bytes and a newline (a file of exactly 32
//! raw bytes is accepted too). It is created with mode 0600 (its directory,
//! when created, 0700), and a key file readable by group or other is
//! refused. Losing the key file makes every stored secret unreadable: back
//! it up with the database.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::Rng as _;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Length of a secrets key in bytes (256 bits).
pub const KEY_LEN: usize = 32;
/// Length of the random XChaCha20 nonce stored in front of each ciphertext.
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 authentication tag.
const TAG_LEN: usize = 16;
/// Version prefix of sealed values.
pub const SEALED_PREFIX: &str = "v1:";
/// Domain label in front of every associated-data string.
const AAD_DOMAIN: &[u8] = b"certplane/secret/v1\0";
/// Largest key file accepted (base64 of 32 bytes plus whitespace).
const MAX_KEY_FILE_LEN: u64 = 1024;

/// Errors from loading keys and sealing or opening secrets.
///
/// No variant carries key material, plaintext or the sealed input.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file or its directory could not be read or written.
    #[error("secrets key file {}: {source}", path.display())]
    KeyFileIo {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The key file is readable or writable by group or other.
    #[error(
        "secrets key file {} has mode {mode:04o}, which lets other users read it; \
         restrict it with `chmod 600 {}` (and check who could have copied it)",
        path.display(),
        path.display()
    )]
    KeyFilePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold a 32-byte key.
    #[error(
        "secrets key file {} does not hold a {KEY_LEN}-byte key \
         (expected standard base64 of {KEY_LEN} bytes, or {KEY_LEN} raw bytes)",
        path.display()
    )]
    KeyFileFormat {
        /// The key file.
        path: PathBuf,
    },
    /// The sealed value does not start with a known version prefix.
    #[error("sealed secret has an unsupported format (expected the prefix `{SEALED_PREFIX}`)")]
    UnsupportedVersion,
    /// The sealed value is not valid base64 or is too short.
    #[error("sealed secret is malformed: {0}")]
    Malformed(&'static str),
    /// Authentication failed: wrong key, wrong owner, or altered ciphertext.
    #[error(
        "secret sealed for `{associated}` could not be opened: \
         wrong key, sealed for another owner, or altered"
    )]
    Decrypt {
        /// The associated data the caller expected.
        associated: String,
    },
    /// The plaintext is too large for one XChaCha20-Poly1305 message.
    #[error("secret is too large to encrypt")]
    TooLarge,
    /// The opened secret is not UTF-8 text.
    #[error("secret sealed for `{associated}` is not UTF-8 text")]
    NotUtf8 {
        /// The associated data of the secret.
        associated: String,
    },
    /// A sealed secret map is not a JSON object of strings.
    #[error("sealed secret map is not a JSON object of sealed strings: {0}")]
    MapFormat(String),
}

/// The host's secrets key: seals and opens connector secrets.
///
/// `Debug` shows only [`SecretBox::key_id`]; the key is wiped from memory
/// when the box is dropped.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
    key_id: String,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBox")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SecretBox {
    /// A box using the given key.
    pub fn from_key_bytes(key: &[u8; KEY_LEN]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"certplane/secret-key-id\0")
            .chain_update(key)
            .finalize();
        SecretBox {
            cipher: XChaCha20Poly1305::new(Key::from_slice(key)),
            key_id: hex::encode(&digest[..8]),
        }
    }

    /// A box with a fresh random key (not persisted; for tests and tools).
    pub fn generate() -> Self {
        let key = random_key();
        Self::from_key_bytes(&key)
    }

    /// Loads the key from `path`, or creates a new random key there when the
    /// file does not exist.
    ///
    /// A new key file gets mode 0600, written to a temporary file and linked
    /// into place so a concurrent or interrupted start never sees a partial
    /// key; missing parent directories are created with mode 0700. An
    /// existing key file must not be accessible by group or other.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        match Self::load(path) {
            Err(SecretError::KeyFileIo { source, .. })
                if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let io_err = |source| SecretError::KeyFileIo {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(io_err)?;
        }
        let key = random_key();
        let mut encoded = Zeroizing::new(BASE64.encode(key.as_slice()));
        encoded.push('\n');
        match write_new_file(path, encoded.as_bytes()) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created a new secrets key file; back it up");
                Ok(Self::from_key_bytes(&key))
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Loads the key from an existing key file (see the module docs for the
    /// format and the permission check).
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let io_err = |source| SecretError::KeyFileIo {
            path: path.to_path_buf(),
            source,
        };
        let file = fs::File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        check_private(path, &meta)?;
        let mut contents = Zeroizing::new(Vec::new());
        file.take(MAX_KEY_FILE_LEN)
            .read_to_end(&mut contents)
            .map_err(io_err)?;
        let key = decode_key(&contents).ok_or_else(|| SecretError::KeyFileFormat {
            path: path.to_path_buf(),
        })?;
        Ok(Self::from_key_bytes(&key))
    }

    /// A short, non-secret identifier of the key (hex of a hash of it), to
    /// tell keys apart in logs and diagnostics.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Seals `plaintext` for the owner `associated`; returns `v1:<base64>`.
    ///
    /// Fails only for plaintexts beyond XChaCha20-Poly1305's message limit
    /// (256 GiB).
    pub fn seal(&self, plaintext: &[u8], associated: &str) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill(&mut nonce);
        let aad = associated_data(associated);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::TooLarge)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{}", BASE64.encode(blob)))
    }

    /// Opens a value sealed by [`SecretBox::seal`] for the same owner
    /// `associated`.
    pub fn open(&self, sealed: &str, associated: &str) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let encoded = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SecretError::UnsupportedVersion)?;
        let blob = BASE64
            .decode(encoded.trim_end())
            .map_err(|_| SecretError::Malformed("not valid base64"))?;
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretError::Malformed("too short"));
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let aad = associated_data(associated);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SecretError::Decrypt {
                associated: associated.to_owned(),
            })
    }

    /// Seals a UTF-8 secret (same as [`SecretBox::seal`] on its bytes).
    pub fn seal_str(&self, plaintext: &str, associated: &str) -> Result<String, SecretError> {
        self.seal(plaintext.as_bytes(), associated)
    }

    /// Opens a secret sealed from UTF-8 text.
    pub fn open_str(
        &self,
        sealed: &str,
        associated: &str,
    ) -> Result<Zeroizing<String>, SecretError> {
        let mut bytes = self.open(sealed, associated)?;
        let text = String::from_utf8(std::mem::take(&mut *bytes)).map_err(|e| {
            // Wipe the rejected bytes too.
            drop(Zeroizing::new(e.into_bytes()));
            SecretError::NotUtf8 {
                associated: associated.to_owned(),
            }
        })?;
        Ok(Zeroizing::new(text))
    }

    /// Seals a map of named secrets into one JSON object of sealed values,
    /// `{"<name>": "v1:..."}`. Each value is sealed for `<owner>/<name>`, so
    /// values cannot be swapped between names or owners.
    pub fn seal_map(
        &self,
        secrets: &BTreeMap<String, String>,
        owner: &str,
    ) -> Result<String, SecretError> {
        let mut object = serde_json::Map::new();
        for (name, value) in secrets {
            let sealed = self.seal_str(value, &entry_owner(owner, name))?;
            object.insert(name.clone(), serde_json::Value::String(sealed));
        }
        Ok(serde_json::Value::Object(object).to_string())
    }

    /// Opens a JSON object produced by [`SecretBox::seal_map`] for the same
    /// `owner`.
    pub fn open_map(
        &self,
        sealed: &str,
        owner: &str,
    ) -> Result<BTreeMap<String, Zeroizing<String>>, SecretError> {
        let object: BTreeMap<String, String> =
            serde_json::from_str(sealed).map_err(|e| SecretError::MapFormat(e.to_string()))?;
        object
            .into_iter()
            .map(|(name, value)| {
                let plain = self.open_str(&value, &entry_owner(owner, &name))?;
                Ok((name, plain))
            })
            .collect()
    }
}

fn entry_owner(owner: &str, name: &str) -> String {
    format!("{owner}/{name}")
}

fn associated_data(associated: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_DOMAIN.len() + associated.len());
    aad.extend_from_slice(AAD_DOMAIN);
    aad.extend_from_slice(associated.as_bytes());
    aad
}

fn random_key() -> Zeroizing<[u8; KEY_LEN]> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rand::rng().fill(&mut *key);
    key
}

/// Base64 text (surrounding whitespace ignored) or exactly 32 raw bytes.
fn decode_key(contents: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if let Ok(text) = std::str::from_utf8(contents) {
        let decoded = Zeroizing::new(BASE64.decode(text.trim()).unwrap_or_default());
        if decoded.len() == KEY_LEN {
            key.copy_from_slice(&decoded);
            return Some(key);
        }
    }
    if contents.len() == KEY_LEN {
        key.copy_from_slice(contents);
        return Some(key);
    }
    None
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::KeyFilePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &fs::Metadata) -> Result<(), SecretError> {
    Ok(())
}

/// Creates `dir` and its missing parents; directories created here get mode
/// 0700, existing ones are left as they are.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Writes `contents` to a new 0600 file at `path`, atomically: the file
/// appears complete or not at all, and an existing file is never replaced
/// (`AlreadyExists`).
fn write_new_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "key path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{:016x}", rand::random::<u64>()));
    let tmp = dir.join(tmp_name);

    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        // Unlike rename, a hard link never replaces an existing file.
        fs::hard_link(&tmp, path)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    let _ = fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: &str = "issuer/0192/api_key";

    #[test]
    fn round_trip() {
        let sb = SecretBox::generate();
        let sealed = sb.seal(b"s3cr3t \x00 bytes", OWNER).unwrap();
        assert!(sealed.starts_with("v1:"));
        assert_eq!(
            sb.open(&sealed, OWNER).unwrap().as_slice(),
            b"s3cr3t \x00 bytes"
        );
        let text = sb.seal_str("hunter2", OWNER).unwrap();
        assert_eq!(sb.open_str(&text, OWNER).unwrap().as_str(), "hunter2");
        // Empty secrets work too.
        let empty = sb.seal(b"", OWNER).unwrap();
        assert!(sb.open(&empty, OWNER).unwrap().is_empty());
    }

    #[test]
    fn nonces_are_fresh() {
        let sb = SecretBox::generate();
        let a = sb.seal(b"same", OWNER).unwrap();
        let b = sb.seal(b"same", OWNER).unwrap();
        assert_ne!(a, b);
        let blob = BASE64.decode(&a[3..]).unwrap();
        assert_eq!(blob.len(), NONCE_LEN + 4 + TAG_LEN);
    }

    #[test]
    fn wrong_associated_data_fails() {
        let sb = SecretBox::generate();
        let sealed = sb.seal(b"value", "issuer/1/api_key").unwrap();
        for other in [
            "issuer/2/api_key",
            "issuer/1/password",
            "",
            "issuer/1/api_key/",
        ] {
            let err = sb.open(&sealed, other).unwrap_err();
            assert!(
                matches!(err, SecretError::Decrypt { ref associated } if associated == other),
                "{err}"
            );
        }
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let sb = SecretBox::generate();
        let sealed = sb.seal(b"value", OWNER).unwrap();
        let blob = BASE64.decode(&sealed[3..]).unwrap();
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            let bad = format!("v1:{}", BASE64.encode(&bad));
            assert!(
                matches!(sb.open(&bad, OWNER), Err(SecretError::Decrypt { .. })),
                "byte {i}"
            );
        }
        let truncated = format!("v1:{}", BASE64.encode(&blob[..blob.len() - 1]));
        assert!(matches!(
            sb.open(&truncated, OWNER),
            Err(SecretError::Decrypt { .. })
        ));
        let short = format!("v1:{}", BASE64.encode(&blob[..NONCE_LEN + TAG_LEN - 1]));
        assert!(matches!(
            sb.open(&short, OWNER),
            Err(SecretError::Malformed(_))
        ));
        assert!(matches!(
            sb.open("v1:not*base64", OWNER),
            Err(SecretError::Malformed(_))
        ));
    }

    #[test]
    fn wrong_key_fails() {
        let a = SecretBox::from_key_bytes(&[7u8; KEY_LEN]);
        let b = SecretBox::from_key_bytes(&[8u8; KEY_LEN]);
        let sealed = a.seal(b"value", OWNER).unwrap();
        assert!(matches!(
            b.open(&sealed, OWNER),
            Err(SecretError::Decrypt { .. })
        ));
        assert_ne!(a.key_id(), b.key_id());
        // The same key bytes give a box that opens it.
        let a2 = SecretBox::from_key_bytes(&[7u8; KEY_LEN]);
        assert_eq!(a2.open(&sealed, OWNER).unwrap().as_slice(), b"value");
        assert_eq!(a.key_id(), a2.key_id());
    }

    #[test]
    fn bad_version_prefix_fails() {
        let sb = SecretBox::generate();
        let sealed = sb.seal(b"value", OWNER).unwrap();
        for bad in [
            sealed.replacen("v1:", "v2:", 1),
            sealed[3..].to_string(),
            "plaintext".into(),
            String::new(),
        ] {
            let err = sb.open(&bad, OWNER).unwrap_err();
            assert!(matches!(err, SecretError::UnsupportedVersion), "{err}");
        }
        // The error never echoes the input (it may be a plaintext secret).
        let err = sb.open("hunter2-plaintext", OWNER).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn map_round_trip_and_binding() {
        let sb = SecretBox::generate();
        let mut secrets = BTreeMap::new();
        secrets.insert("api_key".to_string(), "k-123".to_string());
        secrets.insert("password".to_string(), "p@ss".to_string());
        let json = sb.seal_map(&secrets, "issuer/42").unwrap();
        assert!(!json.contains("k-123") && !json.contains("p@ss"));
        let opened = sb.open_map(&json, "issuer/42").unwrap();
        assert_eq!(opened.len(), 2);
        assert_eq!(opened["api_key"].as_str(), "k-123");
        assert_eq!(opened["password"].as_str(), "p@ss");

        // Copied to another owner: refused.
        assert!(matches!(
            sb.open_map(&json, "issuer/43"),
            Err(SecretError::Decrypt { .. })
        ));
        // Values swapped between names: refused.
        let mut object: BTreeMap<String, String> = serde_json::from_str(&json).unwrap();
        let api = object["api_key"].clone();
        let pw = object["password"].clone();
        object.insert("api_key".into(), pw);
        object.insert("password".into(), api);
        let swapped = serde_json::to_string(&object).unwrap();
        let err = sb.open_map(&swapped, "issuer/42").unwrap_err();
        assert!(err.to_string().contains("issuer/42/"), "{err}");

        assert!(matches!(
            sb.open_map("[1]", "issuer/42"),
            Err(SecretError::MapFormat(_))
        ));
        assert!(sb.open_map("{}", "issuer/42").unwrap().is_empty());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = [0xabu8; KEY_LEN];
        let sb = SecretBox::from_key_bytes(&key);
        let debug = format!("{sb:?}");
        assert!(debug.contains(sb.key_id()));
        assert!(!debug.to_lowercase().contains("abab"), "{debug}");
        assert!(!debug.contains(&BASE64.encode(key)), "{debug}");
        assert!(!debug.contains("171"), "{debug}");
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_created_0600_in_a_0700_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("data/keys/secrets.key");
        let sb = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&tmp.path().join("data/keys")), 0o700);
        assert_eq!(mode(&tmp.path().join("data")), 0o700);
        let contents = fs::read_to_string(&path).unwrap();
        assert_eq!(BASE64.decode(contents.trim()).unwrap().len(), KEY_LEN);
        // No temporary files left behind.
        assert_eq!(
            fs::read_dir(tmp.path().join("data/keys")).unwrap().count(),
            1
        );
        let sealed = sb.seal(b"value", OWNER).unwrap();
        let again = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(again.key_id(), sb.key_id());
        assert_eq!(again.open(&sealed, OWNER).unwrap().as_slice(), b"value");
    }

    #[cfg(unix)]
    #[test]
    fn existing_key_files_are_reloaded_in_both_formats() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let key = [0x5au8; KEY_LEN];
        let expected = SecretBox::from_key_bytes(&key);

        let b64 = tmp.path().join("b64.key");
        fs::write(&b64, format!("  {}\n\n", BASE64.encode(key))).unwrap();
        fs::set_permissions(&b64, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            SecretBox::load_or_create(&b64).unwrap().key_id(),
            expected.key_id()
        );

        let raw = tmp.path().join("raw.key");
        fs::write(&raw, key).unwrap();
        fs::set_permissions(&raw, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(SecretBox::load(&raw).unwrap().key_id(), expected.key_id());

        let short = tmp.path().join("short.key");
        fs::write(&short, BASE64.encode([1u8; 16])).unwrap();
        fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
        let err = SecretBox::load_or_create(&short).unwrap_err();
        assert!(matches!(err, SecretError::KeyFileFormat { .. }), "{err}");
        // The bad file was not replaced by a new key.
        assert_eq!(
            fs::read_to_string(&short).unwrap(),
            BASE64.encode([1u8; 16])
        );
    }

    #[cfg(unix)]
    #[test]
    fn key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("secrets.key");
        SecretBox::load_or_create(&path).unwrap();
        for bad in [0o644, 0o640, 0o604, 0o660, 0o606] {
            fs::set_permissions(&path, fs::Permissions::from_mode(bad)).unwrap();
            let err = SecretBox::load_or_create(&path).unwrap_err();
            assert!(
                matches!(err, SecretError::KeyFilePermissions { mode, .. } if mode == bad),
                "{err}"
            );
            let message = err.to_string();
            assert!(
                message.contains("chmod 600") && message.contains(&format!("{bad:04o}")),
                "{message}"
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        SecretBox::load_or_create(&path).unwrap();
    }

    #[test]
    fn concurrent_creation_agrees_on_one_key() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k/secrets.key");
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| SecretBox::load_or_create(&path).map(|b| b.key_id().to_owned()))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    }
}
