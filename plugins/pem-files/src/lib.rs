//! `pem-files`: a certplane target that writes the certificate, its chain and
//! its private key as PEM files into a directory the agent grants it.
//!
//! Settings:
//! - `directory` (default `/certs`): the guest path of the granted preopen.
//! - `layout`: `split` (default) writes `<id>/cert.pem`, `<id>/chain.pem`,
//!   `<id>/fullchain.pem` and `<id>/privkey.pem`; `combined` writes one
//!   `<id>.pem` holding the key, the leaf and the chain.
//! - `verify_host`, `verify_port` (default 443), `server_name` (default the
//!   first DNS name of the certificate): where the agent should check that
//!   the new certificate is served; returned as `deploy-result.verify-at`.
//! - `post_deploy_action` (optional): the name of an action the agent's
//!   operator defined and granted to this instance (a server reload, say),
//!   run after `deploy` changed a file and after `remove` removed one.
//!
//! Per-certificate options: `post_deploy_action`, an action name that
//! replaces the setting for that certificate. Other keys are ignored (one
//! options object serves every target of a certificate).
//!
//! Every file is written atomically (temporary file in the same directory,
//! then a rename), unchanged files are not rewritten, and `remove` deletes
//! what `deploy` wrote.
//!
//! **The post-deploy action** runs only when something changed: the same
//! bundle deployed again runs nothing. It runs after the files are written,
//! so when it fails the new files stay in place (the call fails `rejected`
//! with the action's name and the end of its standard error; `transient`
//! when it could not start or ran past its timeout). A hidden file
//! `.<id>.certplane-action-pending` in the directory records an action
//! still owed: the next deploy or remove of that certificate runs it even
//! when no file changes, and deletes the record once it succeeded. An
//! action named but not granted is `invalid-config` before any file is
//! touched.
//!
//! **File modes.** WASI 0.2 cannot set file permissions: files are created
//! with the agent's default mode (typically 0644 after its umask), and a
//! rename replaces an existing file's mode with that default. The private
//! key is therefore protected by the *directory*: the agent (its operator)
//! must own the granted directory and give it a restrictive mode (e.g. 0700,
//! or 0750 with the web server's group) so that nobody else can reach the
//! files inside.

pub mod files;

use std::path::Path;

use certplane_sdk::files as sdk_files;
use certplane_sdk::target::{CertificateBundle, DeployResult, Endpoint, Target};
use certplane_sdk::{ConnectorError, PluginInfo, actions, log, pem, settings};
use serde::Deserialize;

use crate::files::{FileError, Layout, Material};

/// The connector's name; equals the manifest's `name`.
pub const NAME: &str = "pem-files";

/// Default guest path of the granted directory.
pub const DEFAULT_DIRECTORY: &str = "/certs";

/// JSON Schema (draft 2020-12) of the settings.
pub const SETTINGS_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "pem-files settings",
  "type": "object",
  "properties": {
    "directory": {
      "type": "string",
      "default": "/certs",
      "description": "Guest path of the directory the agent grants read-write. WASI cannot set file modes: the agent must own this directory and give it a restrictive mode (e.g. 0700), since the private key is written into it."
    },
    "layout": {
      "enum": ["split", "combined"],
      "default": "split",
      "description": "split: <id>/cert.pem, chain.pem, fullchain.pem, privkey.pem. combined: one <id>.pem with key, leaf and chain."
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
    },
    "post_deploy_action": {
      "type": "string",
      "pattern": "^[a-z0-9._-]{1,64}$",
      "description": "Name of an action granted to this instance (defined in the agent's configuration), run after a deploy changed files or a remove removed some. A certificate's options.post_deploy_action replaces it."
    }
  },
  "additionalProperties": false
}"#;

/// The instance settings.
#[derive(Clone, Debug, Deserialize)]
pub struct Settings {
    /// Guest path of the granted directory.
    #[serde(default = "default_directory")]
    pub directory: String,
    /// File layout.
    #[serde(default)]
    pub layout: Layout,
    /// Where to verify.
    #[serde(default)]
    pub verify_host: Option<String>,
    /// Port to verify on.
    #[serde(default)]
    pub verify_port: Option<u16>,
    /// SNI name to verify with.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Action to run after a change.
    #[serde(default)]
    pub post_deploy_action: Option<String>,
}

/// The per-certificate options this connector reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Options {
    /// Replaces the `post_deploy_action` setting for this certificate.
    #[serde(default)]
    pub post_deploy_action: Option<String>,
}

impl Options {
    /// Reads the options object; unknown keys belong to other connectors.
    pub fn parse(json: &str) -> Result<Options, ConnectorError> {
        if json.trim().is_empty() {
            return Ok(Options::default());
        }
        let bad = |e: String| ConnectorError::invalid_config(format!("invalid options: {e}"));
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        if !value.is_object() {
            // serde would read a list as the struct's fields in order.
            return Err(bad("expected a JSON object".into()));
        }
        serde_json::from_value(value).map_err(|e| bad(e.to_string()))
    }
}

/// An action to run after a change, and where its name came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostDeploy {
    /// The action's name.
    pub name: String,
    /// `options.post_deploy_action` or the setting, for messages.
    pub source: &'static str,
}

/// The action for this call: the certificate's option, else the setting;
/// its name checked by the runtime's rules (1-64 of `a-z 0-9 - _ .`).
pub fn post_deploy(s: &Settings, o: &Options) -> Result<Option<PostDeploy>, ConnectorError> {
    let (name, source) = match (&o.post_deploy_action, &s.post_deploy_action) {
        (Some(n), _) => (n, "options.post_deploy_action"),
        (None, Some(n)) => (n, "setting `post_deploy_action`"),
        (None, None) => return Ok(None),
    };
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !valid {
        return Err(ConnectorError::invalid_config(format!(
            "{source} = {name:?} is not an action name (1-64 characters of a-z, 0-9, '-', '_', '.')"
        )));
    }
    Ok(Some(PostDeploy {
        name: name.clone(),
        source,
    }))
}

impl PostDeploy {
    /// Fails `invalid-config` unless the action is granted, so a wrong name
    /// is reported before any file changes.
    fn ensure_granted(&self) -> Result<(), ConnectorError> {
        if actions::granted(&self.name) {
            Ok(())
        } else {
            Err(ConnectorError::invalid_config(format!(
                "{} names action {:?}, which is not granted to this instance (actions are \
                 defined in the agent's configuration and granted by name)",
                self.source, self.name
            )))
        }
    }

    /// Runs the action; a non-zero exit is `rejected` with what it said.
    fn run(&self) -> Result<String, ConnectorError> {
        match actions::run_ok(&self.name) {
            Ok(_) => {
                log::info!("action {} succeeded", self.name);
                Ok(format!("ran action {}", self.name))
            }
            Err(ConnectorError::Rejected(message)) => Err(ConnectorError::rejected(format!(
                "{message} (the files are written; the action runs again at the next deploy or \
                 remove of this certificate)"
            ))),
            Err(e) => Err(e),
        }
    }
}

/// Runs `change` (a deploy or a remove of `id` in `base`) with the
/// post-deploy action around it: the owed-action record is written before
/// a change (`will_change` predicts one), the action runs after a change
/// or when one was owed, and the record is cleared once it succeeded.
fn with_action(
    action: Option<&PostDeploy>,
    base: &Path,
    id: &str,
    will_change: impl FnOnce() -> bool,
    change: impl FnOnce() -> Result<Vec<String>, ConnectorError>,
    dir: &str,
) -> Result<Vec<String>, ConnectorError> {
    let owed = files::action_pending(base, id);
    let Some(action) = action else {
        let changed = change()?;
        if owed {
            // Nothing is configured to run any more: the record means nothing.
            files::clear_action_pending(base, id).map_err(|e| file_error(e, dir))?;
        }
        return Ok(changed);
    };
    let marked = owed || will_change();
    if marked && !owed {
        files::mark_action_pending(base, id, &action.name).map_err(|e| file_error(e, dir))?;
    }
    let mut changed = change()?;
    if owed || !changed.is_empty() {
        changed.push(action.run()?);
    }
    if marked && let Err(e) = files::clear_action_pending(base, id) {
        // The action already ran; at worst it runs once more next time.
        log::warn!("{e}");
    }
    Ok(changed)
}

fn default_directory() -> String {
    DEFAULT_DIRECTORY.into()
}

impl Settings {
    /// Checks the settings that need no I/O.
    pub fn check(&self) -> Result<(), ConnectorError> {
        if self.directory.trim().is_empty() {
            return Err(ConnectorError::invalid_config(
                "setting `directory` is empty",
            ));
        }
        sdk_files::check_verify_settings(
            self.verify_host.as_deref(),
            self.verify_port,
            self.server_name.as_deref(),
        )
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

fn load_settings() -> Result<Settings, ConnectorError> {
    let s: Settings = settings::settings()?;
    s.check()?;
    Ok(s)
}

/// Maps a file error: a directory that is missing, not granted or not
/// writable is a configuration problem; anything else (disk full, I/O error)
/// may pass.
fn file_error(e: FileError, dir: &str) -> ConnectorError {
    use std::io::ErrorKind;
    let msg = e.to_string();
    match e.error.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem | ErrorKind::NotFound => {
            ConnectorError::invalid_config(format!(
                "{msg} (the agent must grant `{dir}` to this instance read-write and the \
                 directory must exist)"
            ))
        }
        _ => ConnectorError::transient(msg),
    }
}

/// Builds the file contents from the bundle: certificates re-encoded
/// canonically, the key's PEM blocks re-encoded, and the bundle checked
/// (the leaf parses, its fingerprint matches, the key holds a private key).
pub fn material(bundle: &CertificateBundle, key_pem: &str) -> Result<Material, ConnectorError> {
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
    let mut chain = Vec::new();
    for (i, c) in bundle.chain_pem.iter().enumerate() {
        for block in pem::certificates(c).map_err(|e| reject(&format!("chain-pem[{i}]"), e))? {
            chain.push(block.to_pem());
        }
    }
    let key_blocks = pem::parse_blocks(key_pem).map_err(|e| reject("key-pem", e))?;
    if !key_blocks.iter().any(|b| b.label.ends_with("PRIVATE KEY")) {
        return Err(ConnectorError::rejected(
            "key-pem holds no PRIVATE KEY block",
        ));
    }
    Ok(Material {
        certificate_id: bundle.certificate_id.clone(),
        cert: leaf.to_pem(),
        chain,
        key: key_blocks.iter().map(pem::PemBlock::to_pem).collect(),
    })
}

/// The exported target.
pub struct PemFiles;

impl Target for PemFiles {
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
        let s = load_settings()?;
        if let Some(action) = post_deploy(&s, &Options::default())? {
            action.ensure_granted()?;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let probe = format!(".certplane-probe-{nanos:x}");
        files::probe_writable(Path::new(&s.directory), &probe)
            .map_err(|e| file_error(e, &s.directory))?;
        log::info!("{} is writable ({:?} layout)", s.directory, s.layout);
        Ok(())
    }

    fn deploy(
        bundle: CertificateBundle,
        key_pem: String,
        options: String,
    ) -> Result<DeployResult, ConnectorError> {
        let s = load_settings()?;
        let action = post_deploy(&s, &Options::parse(&options)?)?;
        files::check_certificate_id(&bundle.certificate_id).map_err(ConnectorError::rejected)?;
        let m = material(&bundle, &key_pem)?;
        if let Some(a) = &action {
            a.ensure_granted()?;
        }
        let base = Path::new(&s.directory);
        let changed = with_action(
            action.as_ref(),
            base,
            &bundle.certificate_id,
            || files::would_change(base, s.layout, &m),
            || files::deploy(base, s.layout, &m).map_err(|e| file_error(e, &s.directory)),
            &s.directory,
        )?;
        if changed.is_empty() {
            log::info!(
                "{} already deployed in {}",
                bundle.certificate_id,
                s.directory
            );
        } else {
            log::info!("{}: {}", bundle.certificate_id, changed.join(", "));
        }
        Ok(DeployResult {
            changed,
            verify_at: s.endpoint(&bundle.dns_names),
        })
    }

    fn remove(certificate_id: String, options: String) -> Result<Vec<String>, ConnectorError> {
        let s = load_settings()?;
        let action = post_deploy(&s, &Options::parse(&options)?)?;
        files::check_certificate_id(&certificate_id).map_err(ConnectorError::rejected)?;
        if let Some(a) = &action {
            a.ensure_granted()?;
        }
        let base = Path::new(&s.directory);
        let changed = with_action(
            action.as_ref(),
            base,
            &certificate_id,
            || files::present(base, &certificate_id),
            || files::remove(base, &certificate_id).map_err(|e| file_error(e, &s.directory)),
            &s.directory,
        )?;
        log::info!("{certificate_id}: removed {} entries", changed.len());
        Ok(changed)
    }
}

certplane_sdk::export_target!(PemFiles);

#[cfg(test)]
mod tests {
    use super::*;

    const LEAF: &str = include_str!("../../sdk/testdata/leaf.pem");
    const INTERMEDIATE: &str = include_str!("../../sdk/testdata/intermediate.pem");
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\r\nAAEC\r\n-----END PRIVATE KEY-----";

    fn s(json: &str) -> Settings {
        settings::settings_from_json(json).unwrap()
    }

    fn bundle() -> CertificateBundle {
        CertificateBundle {
            certificate_id: "web".into(),
            dns_names: vec!["leaf.example.com".into()],
            certificate_pem: LEAF.into(),
            chain_pem: vec![INTERMEDIATE.into()],
            fingerprint_sha256: pem::certificate_fingerprint_sha256(LEAF).unwrap(),
        }
    }

    #[test]
    fn settings_defaults_and_checks() {
        let d = s("{}");
        assert_eq!(d.directory, "/certs");
        assert_eq!(d.layout, Layout::Split);
        assert!(d.endpoint(&["a.example".into()]).is_none());
        assert_eq!(s(r#"{"layout":"combined"}"#).layout, Layout::Combined);
        assert!(settings::settings_from_json::<Settings>(r#"{"layout":"zip"}"#).is_err());
        assert_eq!(
            s(r#"{"verify_port":443}"#).check().unwrap_err().kind(),
            "invalid-config"
        );
        assert!(s(r#"{"server_name":"x"}"#).check().is_err());
        assert!(s(r#"{"directory":" "}"#).check().is_err());
        let v = s(r#"{"verify_host":"127.0.0.1"}"#);
        v.check().unwrap();
        let e = v.endpoint(&["www.example.com".into()]).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.server_name.as_str()),
            ("127.0.0.1", 443, "www.example.com")
        );
        let v = s(r#"{"verify_host":"lb","verify_port":8443,"server_name":"sni.example"}"#);
        let e = v.endpoint(&[]).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.server_name.as_str()),
            ("lb", 8443, "sni.example")
        );
        let e = s(r#"{"verify_host":"lb"}"#).endpoint(&[]).unwrap();
        assert_eq!(e.server_name, "lb");
    }

    #[test]
    fn the_post_deploy_action_comes_from_options_then_settings() {
        let none = s("{}");
        let setting = s(r#"{"post_deploy_action":"reload-nginx"}"#);
        let opts = |json: &str| Options::parse(json).unwrap();
        assert_eq!(post_deploy(&none, &opts("{}")).unwrap(), None);
        assert_eq!(post_deploy(&none, &opts("")).unwrap(), None);
        let a = post_deploy(&setting, &opts("{}")).unwrap().unwrap();
        assert_eq!(
            (a.name.as_str(), a.source),
            ("reload-nginx", "setting `post_deploy_action`")
        );
        // The certificate's option wins; other connectors' keys are ignored.
        let a = post_deploy(
            &setting,
            &opts(r#"{"post_deploy_action":"reload.haproxy_2","reload":"nginx"}"#),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (a.name.as_str(), a.source),
            ("reload.haproxy_2", "options.post_deploy_action")
        );
        let a = post_deploy(&none, &opts(r#"{"post_deploy_action":null}"#)).unwrap();
        assert_eq!(a, None);

        for bad in [
            r#"{"post_deploy_action":""}"#,
            r#"{"post_deploy_action":"/bin/sh -c reboot"}"#,
            r#"{"post_deploy_action":"Reload"}"#,
        ] {
            let e = post_deploy(&none, &opts(bad)).unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{bad}");
            assert!(e.message().contains("options.post_deploy_action"), "{e:?}");
        }
        let long = format!(r#"{{"post_deploy_action":"{}"}}"#, "a".repeat(65));
        assert!(post_deploy(&none, &opts(&long)).is_err());
        let e = post_deploy(&s(r#"{"post_deploy_action":"x y"}"#), &opts("{}")).unwrap_err();
        assert!(
            e.message().contains("setting `post_deploy_action`"),
            "{e:?}"
        );
        // Options of the wrong shape are the operator's to fix.
        for bad in [r#"{"post_deploy_action":5}"#, "[]", "{"] {
            assert_eq!(
                Options::parse(bad).unwrap_err().kind(),
                "invalid-config",
                "{bad}"
            );
        }
    }

    #[test]
    fn material_is_checked_and_normalised() {
        let m = material(&bundle(), KEY).unwrap();
        assert!(pem::same_blocks(&m.cert, LEAF));
        assert_eq!(m.chain.len(), 1);
        assert_eq!(
            m.key,
            "-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n"
        );

        let mut b = bundle();
        b.fingerprint_sha256 = "00".repeat(32);
        assert!(
            material(&b, KEY)
                .unwrap_err()
                .message()
                .contains("fingerprint")
        );
        let mut b = bundle();
        b.fingerprint_sha256 = b.fingerprint_sha256.to_uppercase();
        material(&b, KEY).unwrap();
        let mut b = bundle();
        b.certificate_pem = "nope".into();
        assert_eq!(material(&b, KEY).unwrap_err().kind(), "rejected");
        let e = material(&bundle(), LEAF).unwrap_err();
        assert_eq!(e.message(), "key-pem holds no PRIVATE KEY block");
    }

    #[test]
    fn file_errors_map_to_config_or_transient() {
        let fe = |kind| FileError {
            action: "writing /certs/x".into(),
            error: std::io::Error::from(kind),
        };
        assert_eq!(
            file_error(fe(std::io::ErrorKind::PermissionDenied), "/certs").kind(),
            "invalid-config"
        );
        assert_eq!(
            file_error(fe(std::io::ErrorKind::NotFound), "/certs").kind(),
            "invalid-config"
        );
        assert_eq!(
            file_error(fe(std::io::ErrorKind::StorageFull), "/certs").kind(),
            "transient"
        );
    }

    #[test]
    fn describe_matches_manifest() {
        let info = PemFiles::describe();
        assert_eq!(info.name, NAME);
        serde_json::from_str::<serde_json::Value>(&info.settings_schema).unwrap();
        let manifest = include_str!("../plugin.toml");
        assert!(manifest.contains("name = \"pem-files\""));
        assert!(manifest.contains("kind = \"target\""));
        let version = format!("version = \"{}\"", env!("CARGO_PKG_VERSION"));
        assert!(
            manifest.contains(&version),
            "plugin.toml must say {version}"
        );
    }
}
