//! `caddy`: a certplane target that installs certificates into a running
//! Caddy 2 through its admin API.
//!
//! Settings:
//! - `admin_url` (required): Caddy's admin endpoint, e.g.
//!   `http://127.0.0.1:2019`. The instance's host grant must name its
//!   scheme, host and port; Caddy must accept it as `Host` (its
//!   `admin.listen` address, or one of `admin.origins`).
//! - `mode`: `api` (default) puts the PEM into Caddy's configuration
//!   (`apps.tls.certificates.load_pem`); `files` writes
//!   `<id>/fullchain.pem` and `<id>/privkey.pem` into `directory` and adds a
//!   `load_files` entry naming them.
//! - `tag_prefix` (default `certplane`): the tag of every entry certplane
//!   writes. Each entry carries `["<prefix>", "<prefix>:<certificate-id>"]`
//!   (files mode adds `"<prefix>:sha256:<leaf fingerprint>"`). The
//!   operator's TLS connection policies select them by tag
//!   (`certificate_selection.any_tag`); entries are found again by the
//!   per-certificate tag, so nothing else in Caddy's configuration is
//!   touched.
//! - `directory` (files mode, required there): the guest path of a directory
//!   granted read-write. Caddy reads the files at their real path, which the
//!   runtime names (`context::host-path`): Caddy must see the same path.
//! - `verify_host`, `verify_port` (default 443), `server_name` (default the
//!   certificate's first DNS name): where the agent checks that the new
//!   certificate is served; returned as `deploy-result.verify-at`.
//!
//! Every change is one admin API write guarded by `If-Match` with the
//! `ETag` of the read it was planned from (see [`plan`]): when Caddy's
//! certificates changed in between (412, or a path that vanished), the
//! connector reads again and replans, at most [`MAX_CONFLICTS`] times, then
//! gives up with `transient`.
//!
//! `deploy` is idempotent: when the entry (and in files mode the files) is
//! already what it would write, nothing is written, Caddy is not reloaded
//! and `changed` is empty. A new certificate of the same id replaces its
//! entry in place (`PATCH .../<index>`); duplicates of it and its entries in
//! the other loader (an earlier mode) are removed. In files mode, files are
//! replaced atomically and only when they differ; when the files changed
//! but the entry did not, Caddy is made to reload anyway
//! (`Cache-Control: must-revalidate`). When Caddy refuses the new
//! certificate it keeps running its previous configuration, and files mode
//! puts the previous files back.
//!
//! `remove` deletes the entries of the certificate id from both loaders
//! (and, in files mode, its files); something absent is not an error.
//!
//! Outcomes: a certificate Caddy cannot load (or a bundle that does not
//! parse) is `rejected` with Caddy's error; Caddy unreachable or answering
//! 5xx otherwise is `transient`; Caddy refusing the `Host`/`Origin` (403), a
//! redirect, files Caddy cannot open, and a directory that is not granted
//! are `invalid-config`; an `admin_url` that is not granted is refused by
//! the runtime.
//!
//! **File modes.** WASI 0.2 cannot set file permissions: the key file gets
//! the agent's default mode. The granted directory must be owned by the
//! agent with a restrictive mode (0750 with Caddy's group).

pub mod admin;
pub mod files;
pub mod plan;

use std::path::{Path, PathBuf};

use certplane_sdk::files as sdk_files;
use certplane_sdk::target::{CertificateBundle, DeployResult, Endpoint, Target};
use certplane_sdk::{ConnectorError, PluginInfo, context, log, pem, settings};
use serde::Deserialize;
use serde_json::Value;

use crate::admin::{Admin, Answer};
use crate::files::FileError;
use crate::plan::{Loader, Op};

/// The connector's name; equals the manifest's `name`.
pub const NAME: &str = "caddy";

/// Default `tag_prefix`.
pub const DEFAULT_TAG_PREFIX: &str = "certplane";

/// The number of writes answered "the configuration changed meanwhile"
/// at which one call gives up (`transient`).
pub const MAX_CONFLICTS: u32 = 5;

/// Successful writes one call may make (a deploy needs one, plus one per
/// stale entry to remove): a bound against a configuration that never
/// settles.
const MAX_WRITES: usize = 32;

/// JSON Schema (draft 2020-12) of the settings.
pub const SETTINGS_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "caddy settings",
  "type": "object",
  "required": ["admin_url"],
  "properties": {
    "admin_url": {
      "type": "string",
      "description": "Caddy's admin endpoint, e.g. http://127.0.0.1:2019. Grant its scheme, host and port to the instance; Caddy must accept it as Host (its admin.listen address or admin.origins)."
    },
    "mode": {
      "enum": ["api", "files"],
      "default": "api",
      "description": "api: the PEM goes into Caddy's configuration (load_pem). files: fullchain.pem and privkey.pem are written into `directory` and Caddy loads them (load_files)."
    },
    "tag_prefix": {
      "type": "string",
      "pattern": "^[A-Za-z0-9._-]{1,64}$",
      "default": "certplane",
      "description": "Entries carry the tags <prefix> and <prefix>:<certificate-id>; select them in a TLS connection policy with certificate_selection.any_tag."
    },
    "directory": {
      "type": "string",
      "description": "files mode: guest path of the directory granted read-write. Caddy reads the files at its real path, so it must see the same path. WASI cannot set file modes: give the directory a restrictive mode."
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
  "if": {"properties": {"mode": {"const": "files"}}, "required": ["mode"]},
  "then": {"required": ["directory"]},
  "additionalProperties": false
}"#;

/// Where certificates go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Into Caddy's configuration (`load_pem`).
    #[default]
    Api,
    /// Into files Caddy loads (`load_files`).
    Files,
}

/// The instance settings.
#[derive(Clone, Debug, Deserialize)]
pub struct Settings {
    /// Caddy's admin endpoint.
    pub admin_url: String,
    /// Where certificates go.
    #[serde(default)]
    pub mode: Mode,
    /// The tag of certplane's entries.
    #[serde(default = "default_tag_prefix")]
    pub tag_prefix: String,
    /// Files mode: guest path of the granted directory.
    #[serde(default)]
    pub directory: Option<String>,
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

fn default_tag_prefix() -> String {
    DEFAULT_TAG_PREFIX.into()
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

impl Settings {
    /// Checks the settings that need no I/O.
    pub fn check(&self) -> Result<(), ConnectorError> {
        Admin::new(&self.admin_url)?;
        let prefix_ok = (1..=64).contains(&self.tag_prefix.len())
            && self
                .tag_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !prefix_ok {
            return Err(ConnectorError::invalid_config(format!(
                "setting `tag_prefix` = {:?} must be 1-64 characters of [A-Za-z0-9._-]",
                self.tag_prefix
            )));
        }
        match (self.mode, non_empty(self.directory.as_deref())) {
            (Mode::Files, None) => {
                return Err(ConnectorError::invalid_config(
                    "setting `directory` is required in files mode",
                ));
            }
            (Mode::Api, Some(_)) => {
                return Err(ConnectorError::invalid_config(
                    "setting `directory` is only used in files mode (`mode` = \"files\")",
                ));
            }
            _ => {}
        }
        sdk_files::check_verify_settings(
            self.verify_host.as_deref(),
            self.verify_port,
            self.server_name.as_deref(),
        )
    }

    /// The admin API (the URL was checked by [`Settings::check`]).
    pub fn admin(&self) -> Result<Admin, ConnectorError> {
        Admin::new(&self.admin_url)
    }

    /// Files mode's guest directory.
    fn directory(&self) -> Result<&str, ConnectorError> {
        non_empty(self.directory.as_deref()).ok_or_else(|| {
            ConnectorError::invalid_config("setting `directory` is required in files mode")
        })
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

/// Checks that a certificate id is usable in a tag and as a directory
/// name: 1..=128 characters of `[a-z0-9-]`, not starting with `-`.
pub fn check_certificate_id(id: &str) -> Result<(), ConnectorError> {
    sdk_files::check_certificate_id(id, "in a Caddy tag and a directory name")
        .map_err(ConnectorError::rejected)
}

/// What goes to Caddy for one bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    /// The leaf, then the chain (leaf-nearest first), PEM.
    pub fullchain: String,
    /// The private key's PEM blocks.
    pub key: String,
    /// The leaf's SHA-256 fingerprint, lower-case hex.
    pub fingerprint: String,
}

/// Builds the material from the bundle: certificates re-encoded
/// canonically, the key's PEM blocks re-encoded, and the bundle checked
/// (the leaf parses, its fingerprint matches, the key holds a private key).
/// Whether the key belongs to the leaf is for Caddy to say.
pub fn material(bundle: &CertificateBundle, key_pem: &str) -> Result<Material, ConnectorError> {
    let reject = |what: &str, e: pem::PemError| ConnectorError::rejected(format!("{what}: {e}"));
    let leaf = pem::certificates(&bundle.certificate_pem)
        .map_err(|e| reject("certificate-pem", e))?
        .remove(0);
    let fingerprint = leaf.fingerprint_sha256();
    if !bundle.fingerprint_sha256.is_empty()
        && !fingerprint.eq_ignore_ascii_case(bundle.fingerprint_sha256.trim())
    {
        return Err(ConnectorError::rejected(format!(
            "certificate-pem has SHA-256 fingerprint {fingerprint} but the bundle says {}",
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
    Ok(Material {
        fullchain,
        key: key_blocks.iter().map(pem::PemBlock::to_pem).collect(),
        fingerprint,
    })
}

/// The number of writes without an answer (the connection failed) at
/// which one call gives up.
const MAX_UNANSWERED: u32 = 3;

/// Brings Caddy's certificates to what `plan` wants: read, apply the first
/// write planned, and again until nothing is left. `plan` is told whether
/// a write of this call already succeeded (each one reloads Caddy). Each
/// write's description goes into `changed` as it succeeds, so a caller
/// sees what was done even when a later step fails.
///
/// A write that got no answer may or may not have been applied: the
/// configuration is read again, and when the next plan no longer starts
/// with that write, it counts as done. A repeat is harmless either way:
/// guarded by `If-Match`, a write already applied is answered 412.
fn converge(
    admin: &Admin,
    changed: &mut Vec<String>,
    plan: impl Fn(&Value, bool) -> Result<Vec<Op>, String>,
) -> Result<(), ConnectorError> {
    let mut conflicts = 0;
    let mut unanswered = 0;
    let mut unanswered_op: Option<Op> = None;
    let mut warned = false;
    loop {
        let read = admin.certificates()?;
        let ops = plan(&read.value, !changed.is_empty()).map_err(ConnectorError::rejected)?;
        if let Some(sent) = unanswered_op.take()
            && ops.first() != Some(&sent)
        {
            log::info!("{} (its answer was lost)", sent.describe);
            changed.push(sent.describe);
        }
        let Some(op) = ops.first() else {
            return Ok(());
        };
        if changed.len() >= MAX_WRITES {
            return Err(ConnectorError::transient(format!(
                "Caddy's certificates still need changes after {} writes",
                changed.len()
            )));
        }
        if read.etag.is_none() && !warned {
            warned = true;
            log::warn!(
                "Caddy sent no ETag for its configuration: writing without If-Match, so a \
                 concurrent change may be overwritten"
            );
        }
        match admin.write(op, read.etag.as_deref()) {
            Ok(Answer::Ok) => {
                log::info!("{}", op.describe);
                changed.push(op.describe.clone());
                if ops.len() == 1 {
                    return Ok(());
                }
            }
            Ok(Answer::Conflict(message)) => {
                conflicts += 1;
                if conflicts >= MAX_CONFLICTS {
                    return Err(ConnectorError::transient(format!(
                        "Caddy's configuration changed under each of {conflicts} attempts to \
                         update it; last: {message}"
                    )));
                }
                log::info!("Caddy's configuration changed meanwhile ({message}); reading it again");
            }
            Ok(Answer::Failed(e)) => return Err(e),
            Err(e) if e.kind() == "transient" && unanswered + 1 < MAX_UNANSWERED => {
                unanswered += 1;
                log::info!("{}; reading the configuration again", e.message());
                unanswered_op = Some(op.clone());
                admin::pause(unanswered);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Maps a file error: a directory that is missing, not granted or not
/// writable is a configuration problem; anything else (disk full, I/O
/// error) may pass.
fn file_error(e: &FileError, dir: &str) -> ConnectorError {
    use std::io::ErrorKind;
    match e.error.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem | ErrorKind::NotFound => {
            ConnectorError::invalid_config(format!(
                "{e} (the agent must grant `{dir}` to this instance read-write and the directory \
                 must exist)"
            ))
        }
        _ => ConnectorError::transient(e.to_string()),
    }
}

/// The real path behind a guest path inside the granted directory.
fn host_path(guest: &Path, dir: &str) -> Result<String, ConnectorError> {
    guest.to_str().and_then(context::host_path).ok_or_else(|| {
        ConnectorError::invalid_config(format!(
            "setting `directory` = {dir:?} is not a directory granted to this instance, so \
                 the path Caddy must read ({}) has no real path",
            guest.display()
        ))
    })
}

/// The path to report for a file: its real path when the runtime names it.
fn shown(guest: &Path) -> String {
    guest
        .to_str()
        .and_then(context::host_path)
        .unwrap_or_else(|| guest.display().to_string())
}

fn deploy_api(
    s: &Settings,
    admin: &Admin,
    bundle: &CertificateBundle,
    m: &Material,
) -> Result<Vec<String>, ConnectorError> {
    let tag = plan::id_tag(&s.tag_prefix, &bundle.certificate_id);
    let entry = plan::pem_entry(
        &m.fullchain,
        &m.key,
        &plan::pem_tags(&s.tag_prefix, &bundle.certificate_id),
    );
    let mut changed = Vec::new();
    converge(admin, &mut changed, |certs, _| {
        plan::plan_deploy(certs, Loader::Pem, &entry, &tag, false)
    })?;
    Ok(changed)
}

fn deploy_files(
    s: &Settings,
    admin: &Admin,
    bundle: &CertificateBundle,
    m: &Material,
) -> Result<Vec<String>, ConnectorError> {
    let dir = s.directory()?;
    let id = &bundle.certificate_id;
    let (fullchain_path, key_path) = files::paths(Path::new(dir), id);
    let entry = plan::files_entry(
        &host_path(&fullchain_path, dir)?,
        &host_path(&key_path, dir)?,
        &plan::files_tags(&s.tag_prefix, id, &m.fingerprint),
    );
    let tag = plan::id_tag(&s.tag_prefix, id);
    let staged =
        files::stage(Path::new(dir), id, &m.fullchain, &m.key).map_err(|e| file_error(&e, dir))?;
    let mut changed: Vec<String> = staged
        .written()
        .map(|p| format!("wrote {}", shown(p)))
        .collect();
    let files_changed = !staged.is_empty();
    let mut caddy_changes = Vec::new();
    let result = converge(admin, &mut caddy_changes, |certs, reloaded| {
        plan::plan_deploy(
            certs,
            Loader::Files,
            &entry,
            &tag,
            files_changed && !reloaded,
        )
    });
    match result {
        Ok(()) => {
            changed.extend(caddy_changes);
            Ok(changed)
        }
        // Caddy took none of it (it refused the pair, or was not reached):
        // the previous files are what it still serves, and what it must find
        // when it next starts.
        Err(e) if caddy_changes.is_empty() => match staged.rollback() {
            Ok(()) => Err(e),
            Err(undo) => Err(e.context(format!(
                "putting the previous files back failed ({undo}) after"
            ))),
        },
        // Caddy already loaded the new files; a later step failed. They stay.
        Err(e) => Err(e),
    }
}

/// The exported target.
pub struct Caddy;

impl Target for Caddy {
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
        let admin = s.admin()?;
        let config = admin.get("")?.ok_or_else(|| {
            ConnectorError::transient("Caddy refused to read its own configuration root")
        })?;
        if plan::policy_selects(&config.value, &s.tag_prefix) {
            log::info!(
                "Caddy answers at {}; a TLS connection policy selects the {} tags",
                s.admin_url,
                s.tag_prefix
            );
        } else {
            log::warn!(
                "no TLS connection policy of Caddy's HTTP servers selects certificates by the tag \
                 {:?} (certificate_selection.any_tag): Caddy serves certplane's certificates \
                 only where nothing else is chosen for the name",
                s.tag_prefix
            );
        }
        if s.mode == Mode::Files {
            let dir = s.directory()?;
            host_path(Path::new(dir), dir)?;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            files::probe_writable(Path::new(dir), &format!(".certplane-probe-{nanos:x}"))
                .map_err(|e| file_error(&e, dir))?;
        }
        Ok(())
    }

    fn deploy(
        bundle: CertificateBundle,
        key_pem: String,
        _options: String,
    ) -> Result<DeployResult, ConnectorError> {
        let s = load_settings()?;
        check_certificate_id(&bundle.certificate_id)?;
        let m = material(&bundle, &key_pem)?;
        let admin = s.admin()?;
        let changed = match s.mode {
            Mode::Api => deploy_api(&s, &admin, &bundle, &m)?,
            Mode::Files => deploy_files(&s, &admin, &bundle, &m)?,
        };
        if changed.is_empty() {
            log::info!(
                "{} ({}) is already loaded in Caddy",
                bundle.certificate_id,
                m.fingerprint
            );
        }
        Ok(DeployResult {
            changed,
            verify_at: s.endpoint(&bundle.dns_names),
        })
    }

    fn remove(certificate_id: String, _options: String) -> Result<Vec<String>, ConnectorError> {
        let s = load_settings()?;
        check_certificate_id(&certificate_id)?;
        let admin = s.admin()?;
        let tag = plan::id_tag(&s.tag_prefix, &certificate_id);
        let mut changed = Vec::new();
        converge(&admin, &mut changed, |certs, _| {
            plan::plan_remove(certs, &tag)
        })?;
        // After the entries: Caddy must not be left naming missing files.
        if s.mode == Mode::Files {
            let dir = s.directory()?;
            let removed: Vec<PathBuf> =
                files::remove(Path::new(dir), &certificate_id).map_err(|e| file_error(&e, dir))?;
            changed.extend(removed.iter().map(|p| format!("removed {}", shown(p))));
        }
        log::info!("{certificate_id}: {} removed", changed.len());
        Ok(changed)
    }
}

certplane_sdk::export_target!(Caddy);

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

    fn config_error(json: &str) -> String {
        let e = s(json).check().unwrap_err();
        assert_eq!(e.kind(), "invalid-config", "{json}");
        e.message().to_string()
    }

    #[test]
    fn settings_defaults_and_checks() {
        let d = s(r#"{"admin_url":"http://127.0.0.1:2019"}"#);
        d.check().unwrap();
        assert_eq!((d.mode, d.tag_prefix.as_str()), (Mode::Api, "certplane"));
        assert!(d.endpoint(&["a.example".into()]).is_none());
        assert!(settings::settings_from_json::<Settings>("{}").is_err());
        assert!(
            settings::settings_from_json::<Settings>(r#"{"admin_url":"x","mode":"ftp"}"#).is_err()
        );
        assert!(config_error(r#"{"admin_url":"127.0.0.1:2019"}"#).contains("admin_url"));
        assert!(
            config_error(r#"{"admin_url":"http://h:1","tag_prefix":"a:b"}"#).contains("tag_prefix")
        );
        assert!(
            config_error(r#"{"admin_url":"http://h:1","tag_prefix":""}"#).contains("tag_prefix")
        );
        assert!(config_error(r#"{"admin_url":"http://h:1","mode":"files"}"#).contains("directory"));
        assert!(
            config_error(r#"{"admin_url":"http://h:1","mode":"files","directory":" "}"#)
                .contains("directory")
        );
        assert!(
            config_error(r#"{"admin_url":"http://h:1","directory":"/c"}"#).contains("files mode")
        );
        s(r#"{"admin_url":"http://h:1","mode":"files","directory":"/c","tag_prefix":"cp_2.x-y"}"#)
            .check()
            .unwrap();
        assert!(
            config_error(r#"{"admin_url":"http://h:1","verify_port":443}"#).contains("verify_host")
        );
        assert!(
            config_error(r#"{"admin_url":"http://h:1","server_name":"x"}"#).contains("verify_host")
        );
        assert!(
            config_error(r#"{"admin_url":"http://h:1","verify_host":"x","verify_port":0}"#)
                .contains("1-65535")
        );
        let v = s(r#"{"admin_url":"http://h:1","verify_host":"127.0.0.1","verify_port":8443}"#);
        let e = v.endpoint(&["www.example.com".into()]).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.server_name.as_str()),
            ("127.0.0.1", 8443, "www.example.com")
        );
        let v = s(r#"{"admin_url":"http://h:1","verify_host":"lb","server_name":"sni.example"}"#);
        let e = v.endpoint(&[]).unwrap();
        assert_eq!((e.port, e.server_name.as_str()), (443, "sni.example"));
    }

    #[test]
    fn schema_matches_the_settings() {
        let schema: Value = serde_json::from_str(SETTINGS_SCHEMA).unwrap();
        let props = schema["properties"].as_object().unwrap();
        let mut names: Vec<&str> = props.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "admin_url",
                "directory",
                "mode",
                "server_name",
                "tag_prefix",
                "verify_host",
                "verify_port"
            ]
        );
        assert_eq!(schema["required"], serde_json::json!(["admin_url"]));
        assert_eq!(schema["then"]["required"], serde_json::json!(["directory"]));
    }

    #[test]
    fn certificate_ids() {
        check_certificate_id("web-prod-01").unwrap();
        for bad in ["", "-x", "Web", "a/b", "..", "a:b", "a_b", &"a".repeat(129)] {
            assert_eq!(
                check_certificate_id(bad).unwrap_err().kind(),
                "rejected",
                "{bad}"
            );
        }
    }

    #[test]
    fn material_is_checked_and_normalised() {
        let m = material(&bundle(), KEY).unwrap();
        let blocks = pem::certificates(&m.fullchain).unwrap();
        assert_eq!(blocks.len(), 2);
        assert!(pem::same_blocks(&blocks[0].to_pem(), LEAF));
        assert!(pem::same_blocks(&blocks[1].to_pem(), INTERMEDIATE));
        assert_eq!(
            m.key,
            "-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n"
        );
        assert_eq!(m.fingerprint, bundle().fingerprint_sha256);

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
        let mut b = bundle();
        b.chain_pem = vec!["-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into()];
        assert!(
            material(&b, KEY)
                .unwrap_err()
                .message()
                .starts_with("chain-pem[0]")
        );
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
            file_error(&fe(std::io::ErrorKind::PermissionDenied), "/certs").kind(),
            "invalid-config"
        );
        assert_eq!(
            file_error(&fe(std::io::ErrorKind::StorageFull), "/certs").kind(),
            "transient"
        );
    }

    #[test]
    fn describe_matches_manifest() {
        let info = Caddy::describe();
        assert_eq!(info.name, NAME);
        let manifest = include_str!("../plugin.toml");
        assert!(manifest.contains("name = \"caddy\""));
        assert!(manifest.contains("kind = \"target\""));
        assert!(manifest.contains("world = \"1.1.0\""));
        let version = format!("version = \"{}\"", env!("CARGO_PKG_VERSION"));
        assert!(
            manifest.contains(&version),
            "plugin.toml must say {version}"
        );
    }
}
