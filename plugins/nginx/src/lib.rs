//! `nginx`: a certplane target that writes a certificate's files where an
//! nginx configuration names them (`ssl_certificate`,
//! `ssl_certificate_key`), has nginx test its configuration and reloads it,
//! through actions the operator defined and granted. It never names a
//! command itself: the agent's configuration says what `nginx-test` and
//! `nginx-reload` run.
//!
//! Settings:
//! - `directory` (default `/certs`): guest path of the directory the agent
//!   grants read-write; the file names below are relative to it.
//! - `cert_file` (default `<id>/fullchain.pem`), `key_file` (default
//!   `<id>/privkey.pem`): where the full chain (leaf first) and the private
//!   key go; `<id>` stands for the certificate id. When both name the same
//!   file, it holds the key followed by the full chain.
//! - `test_action` (default `nginx-test`), `reload_action` (default
//!   `nginx-reload`): the granted actions running `nginx -t` and
//!   `nginx -s reload`.
//! - `verify_host`, `verify_port` (default 443), `server_name` (default the
//!   certificate's first DNS name): where the agent checks the new
//!   certificate is served (`deploy-result.verify-at`).
//!
//! Per-certificate options (a JSON object): `test_action`, `reload_action`
//! name *other granted actions* for this certificate (a second nginx, say).
//!
//! Outcomes: `deploy` with files that already hold the bundle changes
//! nothing and runs nothing. Otherwise the files are replaced atomically
//! (the previous ones kept as backups, see [`files`]), the test action runs
//! and then the reload action. A failing test puts the previous files back
//! (the same files: bytes, mode, owner, times), or deletes them if there
//! were none, and is `rejected` with nginx's message; a failing reload puts
//! them back too and is `transient`, so a retry tests and reloads again. A
//! timed-out action is `transient` (files restored); an ungranted one is
//! `invalid-config` before any file is touched. A call stopped at its
//! deadline mid-way leaves a journal that the next call rolls back first
//! (and then tests and reloads, whatever it deploys). `remove` deletes the
//! files, tests and reloads; a configuration that still names them fails
//! the test: the files are put back and the call is `rejected` (drop the
//! server block first). Removing absent files changes nothing.
//!
//! **File modes.** WASI 0.2 cannot set permissions: files get the agent's
//! default mode. The key is protected by the *directory*, which the
//! operator must create with a restrictive mode (e.g. 0700; nginx's master
//! process reads the files as root).

pub mod files;
pub mod txn;

use std::path::{Path, PathBuf};

use certplane_sdk::files as sdk_files;
use certplane_sdk::target::{CertificateBundle, DeployResult, Endpoint, Target};
use certplane_sdk::{ConnectorError, PluginInfo, log, pem, settings};
use serde::Deserialize;

use crate::files::Planned;
use crate::txn::{ActionNames, HostActions};

/// The connector's name; equals the manifest's `name`.
pub const NAME: &str = "nginx";

/// Default guest path of the granted directory.
pub const DEFAULT_DIRECTORY: &str = "/certs";
/// Default pattern of the certificate (full chain) file.
pub const DEFAULT_CERT_FILE: &str = "<id>/fullchain.pem";
/// Default pattern of the private key file.
pub const DEFAULT_KEY_FILE: &str = "<id>/privkey.pem";
/// Default name of the configuration test action.
pub const DEFAULT_TEST_ACTION: &str = "nginx-test";
/// Default name of the reload action.
pub const DEFAULT_RELOAD_ACTION: &str = "nginx-reload";

/// JSON Schema (draft 2020-12) of the settings.
pub const SETTINGS_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "nginx settings",
  "type": "object",
  "properties": {
    "directory": {
      "type": "string",
      "default": "/certs",
      "description": "Guest path of the directory the agent grants read-write; cert_file and key_file are relative to it. WASI cannot set file modes: the directory must have a restrictive mode (e.g. 0700), since the private key is written into it."
    },
    "cert_file": {
      "type": "string",
      "default": "<id>/fullchain.pem",
      "description": "File for the full chain (leaf first), relative to directory; <id> is replaced by the certificate id. nginx's ssl_certificate names it."
    },
    "key_file": {
      "type": "string",
      "default": "<id>/privkey.pem",
      "description": "File for the private key, relative to directory; <id> is replaced by the certificate id. nginx's ssl_certificate_key names it. The same file as cert_file holds the key followed by the full chain."
    },
    "test_action": {
      "type": "string",
      "default": "nginx-test",
      "pattern": "^[a-z0-9_.-]{1,64}$",
      "description": "Granted action that tests nginx's configuration (nginx -t)."
    },
    "reload_action": {
      "type": "string",
      "default": "nginx-reload",
      "pattern": "^[a-z0-9_.-]{1,64}$",
      "description": "Granted action that reloads nginx (nginx -s reload)."
    },
    "verify_host": {
      "type": "string",
      "description": "Host name or IP address where the agent checks that the new certificate is served."
    },
    "verify_port": {
      "type": "integer",
      "minimum": 1,
      "maximum": 65535,
      "default": 443,
      "description": "TCP port for the check."
    },
    "server_name": {
      "type": "string",
      "description": "SNI name for the check; defaults to the certificate's first DNS name."
    }
  },
  "additionalProperties": false
}"#;

/// The instance settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Guest path of the granted directory.
    #[serde(default = "default_directory")]
    pub directory: String,
    /// Pattern of the full chain file.
    #[serde(default = "default_cert_file")]
    pub cert_file: String,
    /// Pattern of the key file.
    #[serde(default = "default_key_file")]
    pub key_file: String,
    /// The configuration test action.
    #[serde(default = "default_test_action")]
    pub test_action: String,
    /// The reload action.
    #[serde(default = "default_reload_action")]
    pub reload_action: String,
    /// Where to verify.
    #[serde(default)]
    pub verify_host: Option<String>,
    /// Port to verify on.
    #[serde(default)]
    pub verify_port: Option<u16>,
    /// SNI name to verify with.
    #[serde(default)]
    pub server_name: Option<String>,
}

fn default_directory() -> String {
    DEFAULT_DIRECTORY.into()
}
fn default_cert_file() -> String {
    DEFAULT_CERT_FILE.into()
}
fn default_key_file() -> String {
    DEFAULT_KEY_FILE.into()
}
fn default_test_action() -> String {
    DEFAULT_TEST_ACTION.into()
}
fn default_reload_action() -> String {
    DEFAULT_RELOAD_ACTION.into()
}

/// Whether `name` can name an action (the runtime's rule: 1-64 characters
/// of `a-z`, `0-9`, `-`, `_`, `.`).
pub fn valid_action_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

fn check_action_name(what: &str, name: &str) -> Result<(), ConnectorError> {
    if valid_action_name(name) {
        Ok(())
    } else {
        Err(ConnectorError::invalid_config(format!(
            "{what} {name:?} is not an action name (1-64 characters of a-z, 0-9, '-', '_', '.')"
        )))
    }
}

impl Settings {
    /// Reads and checks a settings object.
    pub fn from_json(json: &str) -> Result<Settings, ConnectorError> {
        let s: Settings = settings::settings_from_json(json)?;
        s.check()?;
        Ok(s)
    }

    /// Checks the settings that need no I/O.
    pub fn check(&self) -> Result<(), ConnectorError> {
        if self.directory.trim().is_empty() {
            return Err(ConnectorError::invalid_config(
                "setting `directory` is empty",
            ));
        }
        for (name, pattern) in [("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            files::expand(pattern, "example-id")
                .map_err(|e| ConnectorError::invalid_config(format!("setting `{name}`: {e}")))?;
        }
        check_action_name("setting `test_action`", &self.test_action)?;
        check_action_name("setting `reload_action`", &self.reload_action)?;
        sdk_files::check_verify_settings(
            self.verify_host.as_deref(),
            self.verify_port,
            self.server_name.as_deref(),
        )
    }

    /// The relative paths of certificate `id`'s files: the full chain's and
    /// the key's (equal when both patterns name one file).
    pub fn paths(&self, id: &str) -> Result<(PathBuf, PathBuf), ConnectorError> {
        files::check_certificate_id(id).map_err(ConnectorError::rejected)?;
        let expand = |name: &str, pattern: &str| {
            files::expand(pattern, id)
                .map_err(|e| ConnectorError::invalid_config(format!("setting `{name}`: {e}")))
        };
        Ok((
            expand("cert_file", &self.cert_file)?,
            expand("key_file", &self.key_file)?,
        ))
    }

    /// The actions for one call: the settings', unless the certificate's
    /// options name others.
    pub fn action_names(&self, options: &Options) -> ActionNames {
        ActionNames {
            test: options
                .test_action
                .clone()
                .unwrap_or_else(|| self.test_action.clone()),
            reload: options
                .reload_action
                .clone()
                .unwrap_or_else(|| self.reload_action.clone()),
        }
    }

    /// Where the agent should verify, given the deployed certificate's DNS
    /// names; `None` without `verify_host`.
    pub fn endpoint(&self, dns_names: &[String]) -> Option<Endpoint> {
        sdk_files::verify_endpoint(
            self.verify_host.as_deref(),
            self.verify_port,
            self.server_name.as_deref(),
            dns_names,
        )
    }
}

/// A certificate's options for this connector.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Another granted action to test nginx's configuration with.
    #[serde(default)]
    pub test_action: Option<String>,
    /// Another granted action to reload nginx with.
    #[serde(default)]
    pub reload_action: Option<String>,
}

impl Options {
    /// Reads and checks the options JSON (`{}` or empty: none).
    pub fn from_json(json: &str) -> Result<Options, ConnectorError> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        let options: Options = serde_json::from_str(json).map_err(|e| {
            ConnectorError::invalid_config(format!(
                "invalid certificate options for the nginx target (known: test_action, \
                 reload_action, each the name of a granted action): {e}"
            ))
        })?;
        if let Some(name) = &options.test_action {
            check_action_name("option `test_action`", name)?;
        }
        if let Some(name) = &options.reload_action {
            check_action_name("option `reload_action`", name)?;
        }
        Ok(options)
    }
}

/// The certificate's options: the `options` argument, or the call
/// context's when the argument is empty (they are the same object; the
/// context is where 1.1 hosts always put it).
fn options(argument: &str) -> Result<Options, ConnectorError> {
    if argument.trim().is_empty() {
        Options::from_json(&certplane_sdk::context::options())
    } else {
        Options::from_json(argument)
    }
}

/// The files for `bundle`: the full chain (leaf re-encoded, then the
/// chain) at `cert`, the key at `key`, or the key followed by the full
/// chain when both are one file. Checks the bundle first (the leaf parses,
/// its fingerprint matches, the key text holds a private key block): what
/// only nginx can tell (whether the key fits the certificate) is left to
/// the test action.
pub fn planned_files(
    bundle: &CertificateBundle,
    key_pem: &str,
    cert: &Path,
    key: &Path,
) -> Result<Vec<Planned>, ConnectorError> {
    let reject = |what: &str, e: pem::PemError| ConnectorError::rejected(format!("{what}: {e}"));
    let leaf = pem::certificates(&bundle.certificate_pem)
        .map_err(|e| reject("certificate-pem", e))?
        .remove(0);
    if !bundle.fingerprint_sha256.is_empty()
        && !leaf
            .fingerprint_sha256()
            .eq_ignore_ascii_case(bundle.fingerprint_sha256.trim())
    {
        return Err(ConnectorError::rejected(format!(
            "certificate-pem has SHA-256 fingerprint {} but the bundle says {}",
            leaf.fingerprint_sha256(),
            bundle.fingerprint_sha256
        )));
    }
    let mut fullchain = leaf.to_pem();
    for (i, c) in bundle.chain_pem.iter().enumerate() {
        for block in pem::certificates(c).map_err(|e| reject(&format!("chain-pem[{i}]"), e))? {
            fullchain.push_str(&block.to_pem());
        }
    }
    let key_blocks = pem::parse_blocks(key_pem).map_err(|e| reject("key-pem", e))?;
    if !key_blocks.iter().any(|b| b.label.ends_with("PRIVATE KEY")) {
        return Err(ConnectorError::rejected(
            "key-pem holds no PRIVATE KEY block",
        ));
    }
    let key_text: String = key_blocks.iter().map(pem::PemBlock::to_pem).collect();
    if cert == key {
        return Ok(vec![Planned {
            rel: cert.to_path_buf(),
            contents: format!("{key_text}{fullchain}").into_bytes(),
        }]);
    }
    Ok(vec![
        Planned {
            rel: key.to_path_buf(),
            contents: key_text.into_bytes(),
        },
        Planned {
            rel: cert.to_path_buf(),
            contents: fullchain.into_bytes(),
        },
    ])
}

/// The exported target.
pub struct Nginx;

impl Target for Nginx {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: env!("CARGO_PKG_DESCRIPTION").into(),
            settings_schema: SETTINGS_SCHEMA.into(),
            secret_names: vec![],
        }
    }

    fn validate_config() -> Result<(), ConnectorError> {
        let s = Settings::from_json(&settings::settings_json())?;
        s.action_names(&Options::default())
            .check_granted(&HostActions)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let probe = format!(".certplane-probe-{nanos:x}");
        let dir = Path::new(&s.directory);
        txn::check_directory(dir)?;
        files::probe_writable(dir, &probe).map_err(|e| txn::file_error(e, dir))?;
        log::info!(
            "{} is writable; actions {} and {} are granted",
            s.directory,
            s.test_action,
            s.reload_action
        );
        Ok(())
    }

    fn deploy(
        bundle: CertificateBundle,
        key_pem: String,
        options_json: String,
    ) -> Result<DeployResult, ConnectorError> {
        let s = Settings::from_json(&settings::settings_json())?;
        let names = s.action_names(&options(&options_json)?);
        let (cert, key) = s.paths(&bundle.certificate_id)?;
        let planned = planned_files(&bundle, &key_pem, &cert, &key)?;
        let id = &bundle.certificate_id;
        let changed = txn::deploy(Path::new(&s.directory), id, &planned, &names, &HostActions)?;
        if changed.is_empty() {
            log::info!("{id} already deployed in {}", s.directory);
        } else {
            log::info!("{id}: {}", changed.join(", "));
        }
        Ok(DeployResult {
            changed,
            verify_at: s.endpoint(&bundle.dns_names),
        })
    }

    fn remove(certificate_id: String, options_json: String) -> Result<Vec<String>, ConnectorError> {
        let s = Settings::from_json(&settings::settings_json())?;
        let names = s.action_names(&options(&options_json)?);
        let (cert, key) = s.paths(&certificate_id)?;
        let mut rels = vec![cert];
        if !rels.contains(&key) {
            rels.push(key);
        }
        let changed = txn::remove(
            Path::new(&s.directory),
            &certificate_id,
            &rels,
            &names,
            &HostActions,
        )?;
        log::info!("{certificate_id}: {} changes", changed.len());
        Ok(changed)
    }
}

certplane_sdk::export_target!(Nginx);

// The tests compare inodes and modes (std::os::unix): they run natively.
#[cfg(all(test, unix))]
mod tests;
