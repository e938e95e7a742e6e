//! The agent's state directory: its credential, the private keys it
//! generated, where it last verified each deployment, and its last contact
//! with the host.
//!
//! ```text
//! <state_dir>/                 0700
//!   credential.json            0600  agent id + credential + host URL
//!   status.json                0600  last contact, last error (for `status`)
//!   keys/<cert-id>/<spki>.pem  0600  private keys, by SHA-256 of the public key
//!                                    (older ones pruned after a deployment)
//!   endpoints/<target>--<cert-id>.json  where the last deployment was verified
//!   plugin-cache/                    compiled connector components
//! ```
//!
//! Files are written to a uniquely named temporary file in the same
//! directory with the final mode and then renamed, so a crash (even
//! SIGKILL) leaves either the old or the new file, never a torn one.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use certplane_proto::Endpoint;

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A state file is not what the agent wrote.
    #[error("{}: unreadable state file: {reason}", path.display())]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An identifier from the host cannot be used in a file name.
    #[error("refusing unsafe identifier `{0}` in a file name")]
    UnsafeId(String),
}

/// What registration produced; the credential is the agent's identity.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credential {
    /// The agent's id on the host.
    pub agent_id: String,
    /// `cpa_<id>.<secret>`.
    pub credential: String,
    /// The host it was issued by.
    pub host_url: String,
    /// When the agent registered.
    pub registered_at: DateTime<Utc>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("agent_id", &self.agent_id)
            .field("host_url", &self.host_url)
            .finish_non_exhaustive()
    }
}

/// What `certplane-agent status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// Last successful exchange with the host.
    pub last_contact: Option<DateTime<Utc>>,
    /// Last failed exchange, and why.
    pub last_error: Option<String>,
    /// When it failed.
    pub last_error_at: Option<DateTime<Utc>>,
    /// Jobs finished since the state directory was created.
    pub jobs_done: u64,
    /// Set when the host answered 410 Gone: the agent was retired.
    pub retired_at: Option<DateTime<Utc>>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    /// Serialises read-modify-write updates of `status.json` (the
    /// heartbeat task and the poll loop both record contact).
    status_lock: Arc<Mutex<()>>,
}

const CREDENTIAL: &str = "credential.json";
const STATUS: &str = "status.json";
const KEYS: &str = "keys";
const ENDPOINTS: &str = "endpoints";
const PLUGIN_CACHE: &str = "plugin-cache";

impl StateDir {
    /// Opens (creating with mode 0700) the state directory. An existing
    /// directory readable by others is tightened to 0700.
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        create_private_dir(root)?;
        let dir = StateDir {
            root: root.to_path_buf(),
            status_lock: Arc::default(),
        };
        create_private_dir(&dir.root.join(KEYS))?;
        create_private_dir(&dir.root.join(ENDPOINTS))?;
        Ok(dir)
    }

    /// The state directory at `root` for reading only (nothing is created
    /// or changed), if it exists.
    pub fn existing(root: &Path) -> Option<StateDir> {
        root.is_dir().then(|| StateDir {
            root: root.to_path_buf(),
            status_lock: Arc::default(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where compiled plugins are cached.
    pub fn plugin_cache(&self) -> PathBuf {
        self.root.join(PLUGIN_CACHE)
    }

    /// The stored credential, if the agent has registered.
    pub fn credential(&self) -> Result<Option<Credential>, StateError> {
        read_json(&self.root.join(CREDENTIAL))
    }

    /// Stores the credential (0600).
    pub fn save_credential(&self, credential: &Credential) -> Result<(), StateError> {
        write_json(&self.root.join(CREDENTIAL), credential)
    }

    /// The last recorded status (default when none).
    pub fn status(&self) -> Result<Status, StateError> {
        Ok(read_json(&self.root.join(STATUS))?.unwrap_or_default())
    }

    /// Applies `change` to the stored status.
    pub fn update_status(&self, change: impl FnOnce(&mut Status)) -> Result<(), StateError> {
        let _held = self.status_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut status = self.status()?;
        change(&mut status);
        write_json(&self.root.join(STATUS), &status)
    }

    /// Stores a private key for `certificate_id`, named by the SHA-256 of
    /// its public key so the key of an issued certificate is found from the
    /// certificate alone.
    pub fn save_key(
        &self,
        certificate_id: &str,
        public_key_sha256: &str,
        key_pem: &str,
    ) -> Result<PathBuf, StateError> {
        let dir = self.root.join(KEYS).join(safe_id(certificate_id)?);
        create_private_dir(&dir)?;
        let path = dir.join(format!("{}.pem", safe_id(public_key_sha256)?));
        write_private(&path, key_pem.as_bytes())?;
        Ok(path)
    }

    /// The private key for `certificate_id` whose public key hashes to
    /// `public_key_sha256`, if this agent generated it.
    pub fn load_key(
        &self,
        certificate_id: &str,
        public_key_sha256: &str,
    ) -> Result<Option<Zeroizing<String>>, StateError> {
        let path = self
            .root
            .join(KEYS)
            .join(safe_id(certificate_id)?)
            .join(format!("{}.pem", safe_id(public_key_sha256)?));
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(Zeroizing::new(text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Deletes the keys of `certificate_id` generated before the one whose
    /// public key hashes to `keep` (superseded by a renewal, or orphaned by
    /// an issuance that never completed); returns how many. Newer keys (a
    /// renewal's CSR in flight) are kept.
    pub fn prune_keys(&self, certificate_id: &str, keep: &str) -> Result<usize, StateError> {
        let dir = self.root.join(KEYS).join(safe_id(certificate_id)?);
        let kept = dir.join(format!("{}.pem", safe_id(keep)?));
        let modified = |p: &Path| {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .map_err(io_err(p))
        };
        let cutoff = modified(&kept)?;
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            let is_key = path.extension().is_some_and(|e| e == "pem");
            if is_key && path != kept && modified(&path)? <= cutoff {
                fs::remove_file(&path).map_err(io_err(&path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Records where the deployment of `certificate_id` through `target_id`
    /// is verified, for later verification jobs.
    pub fn save_endpoint(
        &self,
        target_id: &str,
        certificate_id: &str,
        endpoint: &Endpoint,
    ) -> Result<(), StateError> {
        write_json(&self.endpoint_path(target_id, certificate_id)?, endpoint)
    }

    /// Where the last deployment of `certificate_id` through `target_id`
    /// was verified.
    pub fn endpoint(
        &self,
        target_id: &str,
        certificate_id: &str,
    ) -> Result<Option<Endpoint>, StateError> {
        read_json(&self.endpoint_path(target_id, certificate_id)?)
    }

    fn endpoint_path(&self, target_id: &str, certificate_id: &str) -> Result<PathBuf, StateError> {
        Ok(self.root.join(ENDPOINTS).join(format!(
            "{}--{}.json",
            safe_id(target_id)?,
            safe_id(certificate_id)?
        )))
    }
}

/// Identifiers come from the host; only plain ones become file names.
fn safe_id(id: &str) -> Result<&str, StateError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !id.starts_with('-');
    if ok {
        Ok(id)
    } else {
        Err(StateError::UnsafeId(id.chars().take(64).collect()))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn create_private_dir(path: &Path) -> Result<(), StateError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err(path))?;
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_err(path))?;
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let bytes =
        Zeroizing::new(
            serde_json::to_vec_pretty(value).map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?,
        );
    write_private(path, &bytes)
}

/// Writes `bytes` to `path` with mode 0600: a uniquely named temporary
/// file (created 0600 by `tempfile`) in the same directory, synced, then
/// renamed over `path`.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_directories_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let state = StateDir::open(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        let cred = Credential {
            agent_id: "a1".into(),
            credential: "cpa_a1.secret".into(),
            host_url: "https://h".into(),
            registered_at: Utc::now(),
        };
        state.save_credential(&cred).unwrap();
        assert_eq!(mode(&root.join(CREDENTIAL)), 0o600);
        assert_eq!(state.credential().unwrap(), Some(cred.clone()));
        assert!(!format!("{cred:?}").contains("secret"));

        let key = state.save_key("cert-1", "ab12", "KEY").unwrap();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(key.parent().unwrap()), 0o700);
        assert_eq!(
            state.load_key("cert-1", "ab12").unwrap().unwrap().as_str(),
            "KEY"
        );
        assert!(state.load_key("cert-1", "cd34").unwrap().is_none());
    }

    #[test]
    fn superseded_keys_are_pruned_newer_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let pause = || std::thread::sleep(std::time::Duration::from_millis(20));
        state.save_key("c", "old", "K0").unwrap();
        pause();
        state.save_key("c", "orphan", "K1").unwrap();
        pause();
        state.save_key("c", "current", "K2").unwrap();
        pause();
        state.save_key("c", "next", "K3").unwrap();
        state.save_key("other", "old", "X").unwrap();
        assert_eq!(state.prune_keys("c", "current").unwrap(), 2);
        assert!(state.load_key("c", "old").unwrap().is_none());
        assert!(state.load_key("c", "orphan").unwrap().is_none());
        assert!(state.load_key("c", "current").unwrap().is_some());
        assert!(
            state.load_key("c", "next").unwrap().is_some(),
            "a newer key is kept"
        );
        assert!(state.load_key("other", "old").unwrap().is_some());
        assert!(state.prune_keys("c", "missing").is_err());
    }

    #[test]
    fn loose_directory_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::open(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
    }

    #[test]
    fn unsafe_ids_never_become_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        for id in ["../x", "a/b", "", "-rf", "a\0b"] {
            assert!(matches!(
                state.save_key(id, "ab", "K"),
                Err(StateError::UnsafeId(_))
            ));
        }
    }

    #[test]
    fn concurrent_status_updates_are_not_lost() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let state = state.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        state.update_status(|s| s.jobs_done += 1).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(state.status().unwrap().jobs_done, 100);
        assert_eq!(mode(&tmp.path().join(STATUS)), 0o600);
        let leftovers: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind");
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        fs::write(tmp.path().join(CREDENTIAL), b"{not json").unwrap();
        assert!(matches!(
            state.credential(),
            Err(StateError::Corrupt { .. })
        ));
        state.update_status(|s| s.jobs_done += 2).unwrap();
        assert_eq!(state.status().unwrap().jobs_done, 2);
    }
}
