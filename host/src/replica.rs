//! What a host settles at start so that several replicas can share one
//! database, and one replica can restart without leaving work behind:
//!
//! * its **instance id** (the owner written on the leases it takes), kept
//!   in `<data_dir>/instance-id` unless configured, so a restarted host
//!   recognises the leases of its previous run;
//! * the **secrets key** check: the first host seals a check value with its
//!   key into `host_meta`; every later start, on any replica, must open it
//!   with its own key, or refuses to start rather than fail on every
//!   connector secret later;
//! * the **bootstrap admin key**: claimed once per database, so of several
//!   replicas starting together exactly one creates and prints it.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::auth;
use crate::config::{HostConfig, MAX_INSTANCE_ID_LEN};
use crate::secrets::{SecretBox, SecretError};
use crate::store::{ApiScope, NewApiKey, Store, StoreError};

/// File in the data directory that keeps a generated instance id.
pub const INSTANCE_ID_FILE: &str = "instance-id";
/// `host_meta` key of the secrets key check value.
pub const SECRETS_CHECK_META: &str = "secrets.check";
/// What the check value seals, and for which owner.
const CHECK_PLAINTEXT: &str = "certplane secrets key check";
const CHECK_OWNER: &str = "host_meta/secrets.check";

/// Why a host cannot start as a replica of its database.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The instance id file could not be read or written.
    #[error("instance id file {}: {source}", path.display())]
    InstanceIdFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The instance id file holds no usable id.
    #[error(
        "instance id file {} does not hold an id (1 to {MAX_INSTANCE_ID_LEN} characters); \
         delete it to have a new one generated, or set instance_id",
        path.display()
    )]
    InstanceIdInvalid {
        /// The file.
        path: PathBuf,
    },
    /// The key opens nothing this database holds.
    #[error(
        "the secrets key in {} (key id {key_id}) is not the key this database's secrets \
         were sealed with (key id {sealed_with}): its connector secrets would not open, \
         so the host refuses to start. Point secrets.key_file at a copy of the key file \
         the database was set up with (the one the other replicas use, or your backup)",
        key_file.display()
    )]
    WrongSecretsKey {
        /// The key file in force.
        key_file: PathBuf,
        /// Its key's id.
        key_id: String,
        /// The id of the key the database's check value was sealed with.
        sealed_with: String,
    },
    /// The key file is missing although the database holds sealed secrets.
    #[error(
        "the secrets key file {} does not exist, but this database's secrets were sealed \
         with key id {sealed_with}; the host refuses to start rather than create a new key \
         that cannot open them. Copy the key file the database was set up with (the one \
         the other replicas use, or your backup) to that path, or point secrets.key_file at it",
        key_file.display()
    )]
    MissingSecretsKey {
        /// The key file in force.
        key_file: PathBuf,
        /// The id of the key the database's check value was sealed with.
        sealed_with: String,
    },
    /// The stored check value is not one this version wrote.
    #[error("the secrets key check value stored in host_meta is unreadable: {0}")]
    CheckValue(String),
    /// Loading or using the key failed.
    #[error(transparent)]
    Secrets(#[from] SecretError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The instance id in force: `instance_id` from the configuration, else
/// the one kept in `<data_dir>/instance-id`, generated (`host-<random>`)
/// and kept there at the first start. The data directory must exist.
pub fn instance_id(config: &HostConfig) -> Result<String, ReplicaError> {
    if let Some(id) = &config.instance_id {
        return Ok(id.trim().to_owned());
    }
    let path = config.data_dir.join(INSTANCE_ID_FILE);
    match read_instance_id(&path) {
        Err(ReplicaError::InstanceIdFile { source, .. })
            if source.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let id = format!("host-{}", uuid::Uuid::new_v4().simple());
    match write_new_file(&path, format!("{id}\n").as_bytes()) {
        Ok(()) => {
            tracing::info!(instance_id = %id, path = %path.display(), "generated this host's instance id");
            Ok(id)
        }
        // Another process on the same data directory wrote one first.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_instance_id(&path),
        Err(source) => Err(ReplicaError::InstanceIdFile { path, source }),
    }
}

fn read_instance_id(path: &Path) -> Result<String, ReplicaError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReplicaError::InstanceIdFile {
        path: path.to_path_buf(),
        source,
    })?;
    let id = text.trim();
    if id.is_empty() || id.len() > MAX_INSTANCE_ID_LEN || id.contains(char::is_control) {
        return Err(ReplicaError::InstanceIdInvalid {
            path: path.to_path_buf(),
        });
    }
    Ok(id.to_owned())
}

/// Writes a new file atomically (complete or absent, never replacing one):
/// a temporary file linked into place.
fn write_new_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    io::Write::write_all(&mut tmp, contents)?;
    tmp.as_file().sync_all()?;
    std::fs::hard_link(tmp.path(), path)
}

/// The stored check value: which key sealed it (a non-secret id, for the
/// error message) and the sealed text.
#[derive(Debug, Serialize, Deserialize)]
struct CheckValue {
    key_id: String,
    sealed: String,
}

/// Loads the secrets key from `key_file` and checks it against the
/// database. The first host to start on a database creates the key file if
/// needed and stores a check value sealed with it; every start afterwards
/// (this replica or another) must open that value with its key. A missing
/// key file is created only while the database has no check value, so a
/// replica started without a copy of the key fails instead of inventing
/// one.
pub async fn open_secrets(store: &Store, key_file: &Path) -> Result<SecretBox, ReplicaError> {
    let stored = store.host_meta(SECRETS_CHECK_META).await?;
    let secrets = match &stored {
        Some(value) => match SecretBox::load(key_file) {
            Err(SecretError::KeyFileIo { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                return Err(ReplicaError::MissingSecretsKey {
                    key_file: key_file.to_path_buf(),
                    sealed_with: parse_check(value)?.key_id,
                });
            }
            other => other?,
        },
        None => SecretBox::load_or_create(key_file)?,
    };
    let stored = match stored {
        Some(value) => value,
        None => {
            let value = serde_json::to_string(&CheckValue {
                key_id: secrets.key_id().to_owned(),
                sealed: secrets.seal_str(CHECK_PLAINTEXT, CHECK_OWNER)?,
            })
            .map_err(|e| ReplicaError::CheckValue(e.to_string()))?;
            if store.insert_host_meta(SECRETS_CHECK_META, &value).await? {
                tracing::info!(key_id = secrets.key_id(), key_file = %key_file.display(),
                    "stored the secrets key check; every replica of this database needs this key");
                return Ok(secrets);
            }
            // Another replica stored its check first: ours must match it.
            store
                .host_meta(SECRETS_CHECK_META)
                .await?
                .ok_or_else(|| ReplicaError::CheckValue("it vanished while starting".into()))?
        }
    };
    let check = parse_check(&stored)?;
    match secrets.open_str(&check.sealed, CHECK_OWNER) {
        Ok(plain) if plain.as_str() == CHECK_PLAINTEXT => Ok(secrets),
        _ => Err(ReplicaError::WrongSecretsKey {
            key_file: key_file.to_path_buf(),
            key_id: secrets.key_id().to_owned(),
            sealed_with: check.key_id,
        }),
    }
}

fn parse_check(value: &str) -> Result<CheckValue, ReplicaError> {
    serde_json::from_str(value).map_err(|e| ReplicaError::CheckValue(e.to_string()))
}

/// Creates the database's first admin API key unless some host already
/// did: the claim and the key are one transaction, so among replicas
/// starting together exactly one gets `Some(plaintext)`, to show once.
pub async fn bootstrap_admin_key(store: &Store) -> Result<Option<String>, ReplicaError> {
    let (key, hash) = auth::new_api_key();
    let claimed = store
        .claim_bootstrap_admin_key(NewApiKey {
            name: "bootstrap-admin".into(),
            key_hash: hash,
            scopes: vec![ApiScope::Admin],
            expires_at: None,
        })
        .await?;
    Ok(claimed.map(|_| key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_instance_id_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let config = HostConfig {
            data_dir: dir.path().to_path_buf(),
            ..HostConfig::default()
        };
        let first = instance_id(&config).unwrap();
        assert!(first.starts_with("host-"), "{first}");
        assert_eq!(instance_id(&config).unwrap(), first);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(INSTANCE_ID_FILE)).unwrap(),
            format!("{first}\n")
        );
        // A configured id wins and leaves the file alone.
        let configured = HostConfig {
            instance_id: Some("replica-a".into()),
            ..config.clone()
        };
        assert_eq!(instance_id(&configured).unwrap(), "replica-a");
        std::fs::write(dir.path().join(INSTANCE_ID_FILE), "  \n").unwrap();
        assert!(matches!(
            instance_id(&config),
            Err(ReplicaError::InstanceIdInvalid { .. })
        ));
    }
}
