//! Narrowing the host's grant request to what this machine allows.
//!
//! A target's configuration on the host asks for directories and hosts; the
//! agent's own config says what each connector may touch here. A request
//! within the allowance passes unchanged; anything wider is refused as a
//! whole (and reported with the job), never widened or silently trimmed:
//! a connector that silently lost a directory would fail in a confusing way.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::config::ConnectorGrants;

/// A directory grant the host asks for (the `grants.directories` items of a
/// target).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct RequestedDir {
    /// Path on this machine.
    pub path: PathBuf,
    /// Path the connector sees.
    pub guest_path: String,
    /// Whether the connector may write there.
    #[serde(default)]
    pub writable: bool,
}

/// The grants the host asks for on a target.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct RequestedGrants {
    /// Host patterns (`scheme://host:port`).
    pub hosts: Vec<String>,
    /// Directories.
    pub directories: Vec<RequestedDir>,
}

/// Why a grant request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantRefused {
    /// The request is not in the expected shape.
    #[error("malformed grants from the host: {0}")]
    Malformed(String),
    /// A directory outside what the agent allows this connector.
    #[error(
        "grant refused: directory {} ({}) is not allowed for connector {plugin} by this agent's configuration",
        path.display(), if *writable { "read-write" } else { "read-only" }
    )]
    Directory {
        /// Connector plugin name.
        plugin: String,
        /// The requested path.
        path: PathBuf,
        /// Whether writing was requested.
        writable: bool,
    },
    /// A host pattern the agent does not allow this connector.
    #[error(
        "grant refused: host {host} is not allowed for connector {plugin} by this agent's configuration"
    )]
    Host {
        /// Connector plugin name.
        plugin: String,
        /// The requested pattern.
        host: String,
    },
}

/// Checks the host's `grants` JSON for `plugin` against `allowed` and
/// returns it parsed when every item is within the allowance.
pub fn check(
    plugin: &str,
    requested: &serde_json::Value,
    allowed: Option<&ConnectorGrants>,
) -> Result<RequestedGrants, GrantRefused> {
    let requested: RequestedGrants = if requested.is_null() {
        RequestedGrants::default()
    } else {
        serde_json::from_value(requested.clone())
            .map_err(|e| GrantRefused::Malformed(e.to_string()))?
    };
    let empty = ConnectorGrants::default();
    let allowed = allowed.unwrap_or(&empty);
    for dir in &requested.directories {
        let ok = is_plain_absolute(&dir.path)
            && allowed
                .directories
                .iter()
                .any(|a| dir.path.starts_with(&a.path) && (a.writable || !dir.writable));
        if !ok {
            return Err(GrantRefused::Directory {
                plugin: plugin.to_owned(),
                path: dir.path.clone(),
                writable: dir.writable,
            });
        }
    }
    for host in &requested.hosts {
        let wanted = host.trim().trim_end_matches('/');
        if !allowed
            .hosts
            .iter()
            .any(|a| a.trim().trim_end_matches('/').eq_ignore_ascii_case(wanted))
        {
            return Err(GrantRefused::Host {
                plugin: plugin.to_owned(),
                host: host.clone(),
            });
        }
    }
    Ok(requested)
}

/// Absolute and free of `..`/`.` components, so that a lexical prefix check
/// means containment.
fn is_plain_absolute(path: &Path) -> bool {
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::AllowedDir;

    fn allowance() -> ConnectorGrants {
        ConnectorGrants {
            directories: vec![
                AllowedDir {
                    path: "/srv/certs".into(),
                    writable: true,
                },
                AllowedDir {
                    path: "/etc/ro".into(),
                    writable: false,
                },
            ],
            hosts: vec!["http://127.0.0.1:2019".into()],
            ..ConnectorGrants::default()
        }
    }

    fn dir(path: &str, writable: bool) -> serde_json::Value {
        json!({ "directories": [{ "path": path, "guest_path": "/certs", "writable": writable }] })
    }

    #[test]
    fn requests_within_the_allowance_pass() {
        let a = allowance();
        assert!(check("p", &dir("/srv/certs", true), Some(&a)).is_ok());
        assert!(check("p", &dir("/srv/certs/site-a", true), Some(&a)).is_ok());
        assert!(check("p", &dir("/etc/ro", false), Some(&a)).is_ok());
        let hosts = json!({ "hosts": ["http://127.0.0.1:2019/"] });
        assert!(check("p", &hosts, Some(&a)).is_ok());
        assert_eq!(
            check("p", &serde_json::Value::Null, None).unwrap(),
            RequestedGrants::default()
        );
    }

    #[test]
    fn wider_requests_are_refused_not_widened() {
        let a = allowance();
        for (req, why) in [
            (dir("/srv", true), "parent of the allowed dir"),
            (
                dir("/srv/certs-other", true),
                "sibling with a common prefix",
            ),
            (dir("/srv/certs/../../etc", true), "dot-dot escape"),
            (dir("/etc/ro", true), "write where only reading is allowed"),
            (dir("relative", false), "relative path"),
        ] {
            let err = check("p", &req, Some(&a)).unwrap_err();
            assert!(
                matches!(err, GrantRefused::Directory { .. }),
                "{why}: {err}"
            );
        }
        let err = check(
            "p",
            &json!({ "hosts": ["https://*.example.com:*"] }),
            Some(&a),
        );
        assert!(matches!(err, Err(GrantRefused::Host { .. })));
        let err = check("p", &dir("/srv/certs", true), None).unwrap_err();
        assert!(
            err.to_string().contains("not allowed for connector p"),
            "{err}"
        );
        assert!(matches!(
            check("p", &json!({ "directories": "x" }), Some(&a)),
            Err(GrantRefused::Malformed(_))
        ));
    }
}
