//! `traefik`: a certplane target that serves certificates through Traefik's
//! file provider. It writes each certificate (leaf, then chain) and its key
//! to new files, and keeps one dynamic configuration file in the directory
//! Traefik watches whose `tls.certificates` names them:
//!
//! ```yaml
//! # certplane-managed: traefik target
//! tls:
//!   certificates:
//!   - certFile: /etc/traefik/certs/web-1-3f2a9c0d4e5b6a71.crt
//!     keyFile: /etc/traefik/certs/web-1-3f2a9c0d4e5b6a71.key
//! ```
//!
//! Settings:
//! - `config_directory` (default `/traefik`): guest path of the granted
//!   read-write directory Traefik's file provider watches
//!   (`providers.file.directory`).
//! - `directory` (default: `config_directory`): guest path of the granted
//!   read-write directory for the certificate files. It may be the watched
//!   directory itself or a directory in it (Traefik reads only `.yml`,
//!   `.yaml` and `.toml` files there, and never watches subdirectories) or
//!   any other granted directory.
//! - `config_file` (default `certplane.yml`): the file certplane owns in
//!   `config_directory`, `.yml` or `.yaml`.
//! - `traefik_directory`: the path at which Traefik opens `directory`, when
//!   it is not the real path (Traefik in a container with another mount);
//!   default the real host path of `directory`
//!   (`certplane_sdk::context::host_path`).
//! - `verify_host`, `verify_port` (default 443), `server_name` (default the
//!   first DNS name of the certificate): where the agent checks that the new
//!   certificate is served; returned as `deploy-result.verify-at`.
//!
//! No secrets. Per-certificate options: none (ignored).
//!
//! **Deploy.** Traefik reads certificate files only when its configuration
//! changes and does not watch them, so new content always goes to new
//! names (`<id>-<16 hex digits of a SHA-256 of both files>.crt` / `.key`,
//! temporary file + rename), then the configuration file is rewritten
//! (temporary file in the watched directory + rename, so Traefik never reads
//! half of it), and only then are the replaced files deleted. A failure
//! before the rename deletes the new files and leaves the configuration as
//! it was. The same bundle again changes nothing (no file is written). The
//! configuration file is the connector's only state: it is read back on
//! every call. A file of that name without certplane's marker first line is
//! never overwritten; neither is a marked file holding anything this
//! connector does not write.
//!
//! **Outcomes.** `invalid-config`: settings, a directory missing, not
//! granted or not writable, the configuration file foreign or edited.
//! `rejected`: a bundle that does not parse or whose fingerprint does not
//! match, an unusable certificate id. `transient`: another call is updating
//! the configuration file (a lock file next to it, taken over after two
//! minutes), other I/O errors, or the configuration switched but replaced
//! files could not be deleted (the retry finishes it).
//!
//! **File modes.** WASI 0.2 cannot set permissions: files get the agent's
//! default mode (0644 after a usual umask). Protect the key with the
//! directory: owned by the agent, mode 0750 with Traefik's group (or 0700
//! when Traefik runs as the agent's user).

pub mod dynamic;
pub mod files;
pub mod names;

use std::path::{Path, PathBuf};

use certplane_sdk::files as sdk_files;
use certplane_sdk::target::{CertificateBundle, DeployResult, Endpoint, Target};
use certplane_sdk::{ConnectorError, PluginInfo, context, log, pem, settings};
use serde::Deserialize;

use crate::files::{Error, Material, Place};

/// The connector's name; equals the manifest's `name`.
pub const NAME: &str = "traefik";

/// Default guest path of the watched directory.
pub const DEFAULT_CONFIG_DIRECTORY: &str = "/traefik";

/// Default name of the dynamic configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "certplane.yml";

/// JSON Schema (draft 2020-12) of the settings.
pub const SETTINGS_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "traefik settings",
  "type": "object",
  "properties": {
    "config_directory": {
      "type": "string",
      "default": "/traefik",
      "description": "Guest path of the granted read-write directory Traefik's file provider watches (providers.file.directory)."
    },
    "directory": {
      "type": "string",
      "description": "Guest path of the granted read-write directory for certificate and key files; defaults to config_directory. WASI cannot set file modes: give it a restrictive mode (e.g. 0750 with Traefik's group)."
    },
    "config_file": {
      "type": "string",
      "default": "certplane.yml",
      "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]*\\.(yml|yaml)$",
      "description": "The dynamic configuration file certplane owns in config_directory."
    },
    "traefik_directory": {
      "type": "string",
      "pattern": "^/",
      "description": "The path at which Traefik opens `directory` when it differs from the real one (Traefik in a container); defaults to the real host path of `directory`."
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
    /// Guest path of the watched directory.
    #[serde(default = "default_config_directory")]
    pub config_directory: String,
    /// Guest path of the certificate files' directory.
    #[serde(default)]
    pub directory: Option<String>,
    /// The configuration file's name.
    #[serde(default = "default_config_file")]
    pub config_file: String,
    /// `directory` as Traefik opens it.
    #[serde(default)]
    pub traefik_directory: Option<String>,
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

fn default_config_directory() -> String {
    DEFAULT_CONFIG_DIRECTORY.into()
}

fn default_config_file() -> String {
    DEFAULT_CONFIG_FILE.into()
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl Settings {
    /// Guest path of the certificate files' directory.
    pub fn cert_directory(&self) -> &str {
        non_empty(&self.directory).unwrap_or(&self.config_directory)
    }

    /// Checks the settings that need no I/O.
    pub fn check(&self) -> Result<(), ConnectorError> {
        let bad = |m: String| Err(ConnectorError::invalid_config(m));
        for (name, value) in [
            ("config_directory", self.config_directory.as_str()),
            ("directory", self.cert_directory()),
        ] {
            if !value.starts_with('/') {
                return bad(format!(
                    "setting `{name}` must be an absolute guest path, got {value:?}"
                ));
            }
        }
        let file = self.config_file.as_str();
        let ok_name = !file.starts_with('.')
            && (file.ends_with(".yml") || file.ends_with(".yaml"))
            && file
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok_name {
            return bad(format!(
                "setting `config_file` must be a file name (no directory) ending in .yml or \
                 .yaml, got {file:?}: Traefik reads only those, and only directly in the \
                 directory it watches"
            ));
        }
        if let Some(t) = &self.traefik_directory {
            check_served_dir(t, "setting `traefik_directory`")?;
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

    /// Where things go, with `served` the certificate directory as Traefik
    /// opens it.
    pub fn place(&self, served: &str) -> Result<Place, ConnectorError> {
        check_served_dir(served, "the certificate directory")?;
        let served = served.trim_end_matches('/');
        Ok(Place {
            cert_dir: PathBuf::from(self.cert_directory()),
            served_cert_dir: if served.is_empty() { "/" } else { served }.to_string(),
            config_dir: PathBuf::from(&self.config_directory),
            config_file: self.config_file.clone(),
        })
    }
}

/// Traefik renders every dynamic configuration file as a Go template before
/// parsing it, so `{{` in a path would be read as template code.
fn check_served_dir(path: &str, what: &str) -> Result<(), ConnectorError> {
    if !path.starts_with('/') {
        return Err(ConnectorError::invalid_config(format!(
            "{what} {path:?} is not an absolute path"
        )));
    }
    if path.contains("{{") {
        return Err(ConnectorError::invalid_config(format!(
            "{what} {path:?} contains `{{{{`, which Traefik reads as a template action"
        )));
    }
    // An agent preopens a grant through the handle it checked
    // (`/proc/self/fd/N`): a name private to the agent's process, which
    // Traefik would resolve to one of its own descriptors.
    if path == "/proc" || path.starts_with("/proc/") {
        return Err(ConnectorError::invalid_config(format!(
            "{what} {path:?} is a path only the agent's process can use, not Traefik: set \
             `traefik_directory` to the path at which Traefik opens `directory`"
        )));
    }
    if path.contains('\n') || path.contains('\r') {
        return Err(ConnectorError::invalid_config(format!(
            "{what} {path:?} contains a line break"
        )));
    }
    Ok(())
}

fn load_settings() -> Result<Settings, ConnectorError> {
    let s: Settings = settings::settings()?;
    s.check()?;
    Ok(s)
}

/// The place from the settings, with the certificate directory's real path
/// from the host unless the operator named Traefik's view of it.
fn resolve(s: &Settings) -> Result<Place, ConnectorError> {
    let served = match non_empty(&s.traefik_directory) {
        Some(t) => t.to_string(),
        None => context::host_path(s.cert_directory()).ok_or_else(|| {
            ConnectorError::invalid_config(format!(
                "`directory` {} is not inside a directory granted to this instance",
                s.cert_directory()
            ))
        })?,
    };
    s.place(&served)
}

/// Maps a failure: what the operator must fix is `invalid-config`; a busy
/// lock, a cleanup left for the retry and other I/O errors (disk full) may
/// pass, so they are `transient`.
pub fn error(e: Error, s: &Settings) -> ConnectorError {
    use std::io::ErrorKind;
    let msg = e.to_string();
    let io = match &e {
        Error::Foreign(_) | Error::Unparseable(..) => {
            return ConnectorError::invalid_config(msg);
        }
        Error::Busy(_) => return ConnectorError::transient(msg),
        Error::Io(f) | Error::Cleanup(f) => f.error.kind(),
    };
    match io {
        ErrorKind::PermissionDenied
        | ErrorKind::ReadOnlyFilesystem
        | ErrorKind::NotFound
        | ErrorKind::NotADirectory => ConnectorError::invalid_config(format!(
            "{msg} (the agent must grant `{}` and `{}` to this instance read-write, and both \
             directories must exist)",
            s.config_directory,
            s.cert_directory()
        )),
        _ => ConnectorError::transient(msg),
    }
}

/// Builds the two files' contents from the bundle: certificates re-encoded
/// canonically (so the same bundle always gives the same bytes and names),
/// the key's PEM blocks re-encoded, and the bundle checked (the leaf
/// parses, its fingerprint matches, the key holds a private key).
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
    let mut cert = leaf.to_pem();
    for (i, c) in bundle.chain_pem.iter().enumerate() {
        for block in pem::certificates(c).map_err(|e| reject(&format!("chain-pem[{i}]"), e))? {
            cert.push_str(&block.to_pem());
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
        cert,
        key: key_blocks.iter().map(pem::PemBlock::to_pem).collect(),
    })
}

/// The exported target.
pub struct Traefik;

impl Target for Traefik {
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
        let place = resolve(&s)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let ids = files::check(&place, &format!(".certplane-probe-{nanos:x}"))
            .map_err(|e| error(e, &s))?;
        log::info!(
            "{} and {} are writable; {} holds {} certificate(s); Traefik opens the files under {}",
            s.config_directory,
            s.cert_directory(),
            Path::new(&s.config_directory)
                .join(&s.config_file)
                .display(),
            ids.len(),
            place.served_cert_dir
        );
        Ok(())
    }

    fn deploy(
        bundle: CertificateBundle,
        key_pem: String,
        _options: String,
    ) -> Result<DeployResult, ConnectorError> {
        let s = load_settings()?;
        names::check_certificate_id(&bundle.certificate_id).map_err(ConnectorError::rejected)?;
        let m = material(&bundle, &key_pem)?;
        let place = resolve(&s)?;
        let changed = files::deploy(&place, &m).map_err(|e| error(e, &s))?;
        if changed.is_empty() {
            log::info!("{} already deployed", bundle.certificate_id);
        } else {
            log::info!("{}: {}", bundle.certificate_id, changed.join(", "));
        }
        Ok(DeployResult {
            changed,
            verify_at: s.endpoint(&bundle.dns_names),
        })
    }

    fn remove(certificate_id: String, _options: String) -> Result<Vec<String>, ConnectorError> {
        let s = load_settings()?;
        names::check_certificate_id(&certificate_id).map_err(ConnectorError::rejected)?;
        let place = resolve(&s)?;
        let changed = files::remove(&place, &certificate_id).map_err(|e| error(e, &s))?;
        log::info!("{certificate_id}: {} change(s)", changed.len());
        Ok(changed)
    }
}

certplane_sdk::export_target!(Traefik);

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

    fn kind(r: Result<(), ConnectorError>) -> String {
        r.unwrap_err().kind().to_string()
    }

    #[test]
    fn settings_defaults_and_checks() {
        let d = s("{}");
        d.check().unwrap();
        assert_eq!(d.config_directory, "/traefik");
        assert_eq!(d.cert_directory(), "/traefik");
        assert_eq!(d.config_file, "certplane.yml");
        assert!(d.endpoint(&["a.example".into()]).is_none());
        let two = s(r#"{"config_directory":"/dyn","directory":"/certs","config_file":"tls.yaml"}"#);
        two.check().unwrap();
        assert_eq!(two.cert_directory(), "/certs");
        let p = two.place("/srv/certs/").unwrap();
        assert_eq!(p.served_cert_dir, "/srv/certs");
        assert_eq!(p.config_path(), Path::new("/dyn/tls.yaml"));

        for bad in [
            r#"{"config_file":"sub/certplane.yml"}"#,
            r#"{"config_file":"certplane.toml"}"#,
            r#"{"config_file":".certplane.yml"}"#,
            r#"{"config_file":"certplane.yml.certplane-tmp"}"#,
            r#"{"config_directory":"traefik"}"#,
            r#"{"directory":"certs"}"#,
            r#"{"traefik_directory":"certs"}"#,
            r#"{"traefik_directory":"/x/{{ env \"HOME\" }}"}"#,
            r#"{"verify_port":443}"#,
            r#"{"server_name":"x"}"#,
            r#"{"verify_host":"h","verify_port":0}"#,
        ] {
            assert_eq!(kind(s(bad).check()), "invalid-config", "{bad}");
        }
        assert!(settings::settings_from_json::<Settings>(r#"{"dir":"/x"}"#).is_err());
        assert_eq!(
            s("{}").place("/a/{{x}}").unwrap_err().kind(),
            "invalid-config"
        );
        assert_eq!(s("{}").place("/").unwrap().served_cert_dir, "/");
        let e = s("{}").place("/proc/self/fd/7").unwrap_err();
        assert_eq!(e.kind(), "invalid-config");
        assert!(e.message().contains("traefik_directory"), "{e:?}");
        s("{}").place("/process/certs").unwrap();

        let v = s(r#"{"verify_host":"127.0.0.1"}"#);
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
    }

    #[test]
    fn material_is_leaf_then_chain_and_checked() {
        let m = material(&bundle(), KEY).unwrap();
        let blocks = pem::certificates(&m.cert).unwrap();
        assert_eq!(blocks.len(), 2);
        assert!(pem::same_blocks(&blocks[0].to_pem(), LEAF));
        assert!(pem::same_blocks(&blocks[1].to_pem(), INTERMEDIATE));
        assert_eq!(
            m.key,
            "-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n"
        );
        // The same bundle always gives the same names.
        assert_eq!(m.stem(), material(&bundle(), KEY).unwrap().stem());

        let mut b = bundle();
        b.fingerprint_sha256 = "00".repeat(32);
        assert_eq!(material(&b, KEY).unwrap_err().kind(), "rejected");
        let mut b = bundle();
        b.certificate_pem = "nope".into();
        assert_eq!(material(&b, KEY).unwrap_err().kind(), "rejected");
        let e = material(&bundle(), LEAF).unwrap_err();
        assert_eq!(e.message(), "key-pem holds no PRIVATE KEY block");
    }

    #[test]
    fn errors_map_to_classes() {
        let settings = s("{}");
        let io = |k| {
            Error::Io(files::FileError {
                action: "writing /traefik/x".into(),
                error: std::io::Error::from(k),
            })
        };
        use std::io::ErrorKind as K;
        for (e, want) in [
            (io(K::PermissionDenied), "invalid-config"),
            (io(K::ReadOnlyFilesystem), "invalid-config"),
            (io(K::NotFound), "invalid-config"),
            (io(K::StorageFull), "transient"),
            (io(K::IsADirectory), "transient"),
            (
                Error::Foreign("/traefik/certplane.yml".into()),
                "invalid-config",
            ),
            (
                Error::Unparseable("/traefik/certplane.yml".into(), "x".into()),
                "invalid-config",
            ),
            (Error::Busy("/traefik/.lock".into()), "transient"),
            (
                Error::Cleanup(files::FileError {
                    action: "removing /traefik/old.key".into(),
                    error: std::io::Error::from(K::Interrupted),
                }),
                "transient",
            ),
        ] {
            assert_eq!(error(e, &settings).kind(), want);
        }
        let msg = error(io(K::PermissionDenied), &settings)
            .message()
            .to_string();
        assert!(msg.contains("grant `/traefik`"), "{msg}");
    }

    #[test]
    fn describe_matches_manifest() {
        let info = Traefik::describe();
        assert_eq!(info.name, NAME);
        let schema: serde_json::Value = serde_json::from_str(&info.settings_schema).unwrap();
        // Every setting the schema names is one the connector reads.
        for key in schema["properties"].as_object().unwrap().keys() {
            let json = match key.as_str() {
                "verify_port" => format!(r#"{{"{key}":443}}"#),
                _ => format!(r#"{{"{key}":"/x.yml"}}"#),
            };
            settings::settings_from_json::<Settings>(&json).unwrap();
        }
        let manifest = include_str!("../plugin.toml");
        assert!(manifest.contains("name = \"traefik\""));
        assert!(manifest.contains("kind = \"target\""));
        assert!(manifest.contains("world = \"1.1.0\""));
        let version = format!("version = \"{}\"", env!("CARGO_PKG_VERSION"));
        assert!(
            manifest.contains(&version),
            "plugin.toml must say {version}"
        );
    }
}
