//! Plugin manifests: the TOML file shipped beside every connector component.
//!
//! ```toml
//! name = "local-ca"
//! version = "0.1.0"
//! kind = "issuer"              # issuer | target | notifier
//! world = "1.1.0"              # certplane:connector version built against
//! component = "local-ca.wasm"  # relative to the manifest
//! sha256 = "<64 lower-case hex digits of the .wasm bytes>"
//! description = "..."
//!
//! [limits]                     # optional defaults, overridable per instance
//! cpu_deadline_ms = 5000
//! memory_mib = 64
//! concurrency = 8              # calls of one instance at once
//!
//! [capabilities]               # what the connector asks for
//! hosts = ["https://www.digicert.com"]
//! filesystem = "none"          # none | read-only | read-write
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::limits::Limits;

/// The `certplane:connector` contract version this runtime implements.
pub const CONTRACT_VERSION: ContractVersion = ContractVersion {
    major: 1,
    minor: 1,
    patch: 0,
};

/// Which world a connector implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// Gets certificates signed (`world issuer`).
    Issuer,
    /// Installs certificates where TLS is served (`world target`).
    Target,
    /// Tells people about events (`world notifier`).
    Notifier,
    /// Publishes dns-01 TXT records (`world dns-solver`, since 1.1).
    DnsSolver,
}

impl PluginKind {
    /// The kind's name as written in manifests and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Issuer => "issuer",
            PluginKind::Target => "target",
            PluginKind::Notifier => "notifier",
            PluginKind::DnsSolver => "dns-solver",
        }
    }

    /// The WIT interface a component of this kind must export.
    pub fn export_interface(self) -> String {
        let iface = match self {
            PluginKind::Issuer => "issuer-api",
            PluginKind::Target => "target-api",
            PluginKind::Notifier => "notifier-api",
            PluginKind::DnsSolver => "dns-solver-api",
        };
        format!("certplane:connector/{iface}@{CONTRACT_VERSION}")
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PluginKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "issuer" => Ok(PluginKind::Issuer),
            "target" => Ok(PluginKind::Target),
            "notifier" => Ok(PluginKind::Notifier),
            "dns-solver" => Ok(PluginKind::DnsSolver),
            other => Err(format!(
                "unknown plugin kind {other:?} (expected issuer, target, notifier or dns-solver)"
            )),
        }
    }
}

/// A `major.minor.patch` version of the connector contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContractVersion {
    /// Incompatible changes.
    pub major: u32,
    /// Backwards-compatible additions.
    pub minor: u32,
    /// Documentation and fixes.
    pub patch: u32,
}

impl ContractVersion {
    /// Whether a component built against `self` can run on a host that
    /// implements `host`: same major, and not newer minor than the host.
    pub fn runs_on(self, host: ContractVersion) -> bool {
        self.major == host.major && self.minor <= host.minor
    }
}

impl fmt::Display for ContractVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for ContractVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('.');
        let mut next = |what: &str| -> Result<u32, String> {
            parts
                .next()
                .ok_or_else(|| format!("version {s:?} has no {what} component"))?
                .parse::<u32>()
                .map_err(|_| format!("version {s:?} is not major.minor.patch"))
        };
        let v = ContractVersion {
            major: next("major")?,
            minor: next("minor")?,
            patch: next("patch")?,
        };
        if parts.next().is_some() {
            return Err(format!("version {s:?} is not major.minor.patch"));
        }
        Ok(v)
    }
}

/// Filesystem access a connector asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilesystemAccess {
    /// No preopened directories at all.
    #[default]
    None,
    /// Directories may be granted, read-only.
    ReadOnly,
    /// Directories may be granted read-write.
    ReadWrite,
}

/// Default limits a manifest suggests for its connector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    /// Wall-clock deadline of one call in milliseconds.
    pub cpu_deadline_ms: Option<u64>,
    /// Linear memory cap of one instance in MiB.
    pub memory_mib: Option<u64>,
    /// Calls of one instance that may run at once. A connector whose calls
    /// only wait on local work (a CA key held in its settings, files in a
    /// granted directory) may ask for more than the host's default, which
    /// is sized for remote services and their rate limits.
    pub concurrency: Option<u32>,
}

/// Capabilities a manifest requests. Operators grant a subset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Outgoing HTTP destinations the connector expects to reach, in grant
    /// syntax (see [`crate::HostGrant`]). Informational: the operator's
    /// grants decide.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Whether the connector wants preopened directories. Grants beyond
    /// this are refused.
    #[serde(default)]
    pub filesystem: FilesystemAccess,
}

/// The raw TOML shape of a manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    kind: String,
    world: String,
    component: String,
    sha256: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    limits: ManifestLimits,
    #[serde(default)]
    capabilities: Capabilities,
}

/// A parsed, validated plugin manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Machine name, `[a-z0-9-]`, equal to the component's `describe().name`.
    pub name: String,
    /// The connector's own version.
    pub version: String,
    /// Which world it implements.
    pub kind: PluginKind,
    /// The contract version it was built against.
    pub world: ContractVersion,
    /// Absolute path of the component file.
    pub component_path: PathBuf,
    /// Expected lower-case hex SHA-256 of the component bytes.
    pub sha256: String,
    /// One line for operators.
    pub description: String,
    /// Suggested default limits.
    pub limits: ManifestLimits,
    /// Requested capabilities.
    pub capabilities: Capabilities,
}

impl Manifest {
    /// Reads and validates the manifest at `path`.
    pub fn from_file(path: &Path) -> Result<Manifest, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Manifest::parse(&text, base).map_err(|reason| LoadError::Manifest {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses manifest text; `base` resolves the relative component path.
    pub fn parse(text: &str, base: &Path) -> Result<Manifest, String> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| e.message().to_string())?;
        if raw.name.is_empty()
            || !raw
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "name {:?} must be non-empty and use only a-z, 0-9 and '-'",
                raw.name
            ));
        }
        let kind = raw.kind.parse::<PluginKind>()?;
        let world = raw
            .world
            .parse::<ContractVersion>()
            .map_err(|e| format!("world: {e}"))?;
        let sha256 = raw.sha256.to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("sha256 {:?} is not 64 hex digits", raw.sha256));
        }
        let component = Path::new(&raw.component);
        if raw.component.is_empty() || component.is_absolute() || raw.component.contains("..") {
            return Err(format!(
                "component {:?} must be a file name relative to the manifest",
                raw.component
            ));
        }
        if raw.limits.cpu_deadline_ms == Some(0)
            || raw.limits.memory_mib == Some(0)
            || raw.limits.concurrency == Some(0)
        {
            return Err("limits must be greater than zero".to_string());
        }
        Ok(Manifest {
            name: raw.name,
            version: raw.version,
            kind,
            world,
            component_path: base.join(component),
            sha256,
            description: raw.description,
            limits: raw.limits,
            capabilities: raw.capabilities,
        })
    }

    /// Fails unless a component built against this manifest's contract
    /// version can run on this runtime.
    pub fn check_compatible(&self) -> Result<(), LoadError> {
        if self.world.runs_on(CONTRACT_VERSION) {
            Ok(())
        } else {
            Err(LoadError::IncompatibleWorld {
                plugin: self.name.clone(),
                built_for: self.world,
                host: CONTRACT_VERSION,
            })
        }
    }

    /// The manifest's default limits layered over `fallback`.
    pub fn default_limits(&self, fallback: Limits) -> Limits {
        Limits {
            deadline: self
                .limits
                .cpu_deadline_ms
                .map(Duration::from_millis)
                .unwrap_or(fallback.deadline),
            memory_bytes: self
                .limits
                .memory_mib
                .map(|m| m.saturating_mul(1024 * 1024))
                .unwrap_or(fallback.memory_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "local-ca"
version = "0.1.0"
kind = "issuer"
world = "1.0.0"
component = "local-ca.wasm"
sha256 = "AB0000000000000000000000000000000000000000000000000000000000000F"
[limits]
memory_mib = 32
[capabilities]
hosts = ["https://example.com"]
"#;

    #[test]
    fn parses_a_good_manifest() {
        let m = Manifest::parse(GOOD, Path::new("/plugins")).unwrap();
        assert_eq!(m.name, "local-ca");
        assert_eq!(m.kind, PluginKind::Issuer);
        assert_eq!(m.component_path, Path::new("/plugins/local-ca.wasm"));
        assert!(m.sha256.starts_with("ab"));
        assert_eq!(m.limits.memory_mib, Some(32));
        assert_eq!(m.capabilities.filesystem, FilesystemAccess::None);
        let limits = m.default_limits(Limits::default());
        assert_eq!(limits.memory_bytes, 32 * 1024 * 1024);
        assert_eq!(limits.deadline, Limits::default().deadline);
    }

    #[test]
    fn refuses_bad_fields_with_reasons() {
        let cases = [
            (GOOD.replace("issuer", "minter"), "unknown plugin kind"),
            (GOOD.replace("\"1.0.0\"", "\"one\""), "world"),
            (GOOD.replace("AB00", "ZZ00"), "not 64 hex digits"),
            (GOOD.replace("local-ca.wasm", "../evil.wasm"), "relative"),
            (
                GOOD.replace("name = \"local-ca\"", "name = \"Local CA\""),
                "a-z",
            ),
            (format!("{GOOD}\nextra = 1\n"), "unknown field"),
            (
                GOOD.replace("memory_mib = 32", "memory_mib = 0"),
                "greater than zero",
            ),
            (
                GOOD.replace("memory_mib = 32", "memory_mib = 32\nconcurrency = 0"),
                "greater than zero",
            ),
        ];
        for (text, needle) in cases {
            let err = Manifest::parse(&text, Path::new("/p")).unwrap_err();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn contract_compatibility_rules() {
        let host = ContractVersion {
            major: 1,
            minor: 2,
            patch: 0,
        };
        let v = |s: &str| s.parse::<ContractVersion>().unwrap();
        assert!(v("1.0.0").runs_on(host));
        assert!(v("1.2.9").runs_on(host));
        assert!(!v("1.3.0").runs_on(host));
        assert!(!v("2.0.0").runs_on(host));
        assert!(!v("0.9.0").runs_on(host));
        assert!("1.0".parse::<ContractVersion>().is_err());
        assert!("1.0.0.0".parse::<ContractVersion>().is_err());
    }

    #[test]
    fn incompatible_major_is_refused_with_versions_in_message() {
        let m = Manifest::parse(&GOOD.replace("\"1.0.0\"", "\"2.0.0\""), Path::new("/p")).unwrap();
        let err = m.check_compatible().unwrap_err().to_string();
        assert!(
            err.contains("2.0.0") && err.contains(&CONTRACT_VERSION.to_string()),
            "{err}"
        );
    }
}
