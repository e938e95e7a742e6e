//! File and settings helpers shared by the target connectors: atomic
//! writes through a hidden temporary sibling, the certificate-id check for
//! names built from an id, and the `verify_host` / `verify_port` /
//! `server_name` settings every target offers.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::ConnectorError;
use crate::target::Endpoint;

/// Suffix of the temporary files written before a rename
/// (`dir/.name.certplane-tmp` for `dir/name`).
pub const TMP_SUFFIX: &str = ".certplane-tmp";

/// An I/O failure with what was being done.
#[derive(Debug)]
pub struct FileError {
    /// What was being done, e.g. `writing /certs/web/fullchain.pem`.
    pub action: String,
    /// The underlying error.
    pub error: io::Error,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.action, self.error)
    }
}

/// A `map_err` adapter: the I/O error as a [`FileError`] doing `action`.
pub fn io_err(action: String) -> impl FnOnce(io::Error) -> FileError {
    move |error| FileError { action, error }
}

/// `dir/.name<suffix>` for `dir/name`.
pub fn hidden_sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{suffix}"))
}

/// `dir/.name.certplane-tmp` for `dir/name`.
pub fn tmp_path(path: &Path) -> PathBuf {
    hidden_sibling(path, TMP_SUFFIX)
}

/// Writes `contents` to `path` through a temporary file in the same
/// directory ([`tmp_path`]), flushed, then renamed over it: a reader at any
/// moment sees the old bytes or the new ones, never a mix. The temporary
/// file is removed again when any step fails.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut f =
            fs::File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        f.write_all(contents)
            .map_err(io_err(format!("writing {}", tmp.display())))?;
        f.sync_all()
            .map_err(io_err(format!("flushing {}", tmp.display())))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io_err(format!(
            "renaming {} to {}",
            tmp.display(),
            path.display()
        )))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes `path`; a missing file is not an error. Adds a line
/// `removed <path>` to `changed` when it removed something.
pub fn remove_file(path: &Path, changed: &mut Vec<String>) -> Result<(), FileError> {
    match fs::remove_file(path) {
        Ok(()) => {
            changed.push(format!("removed {}", path.display()));
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FileError {
            action: format!("removing {}", path.display()),
            error: e,
        }),
    }
}

/// Checks that `dir` is an existing directory this instance can write to,
/// by creating and deleting a probe file `probe_name` in it. A `dir` that
/// is not a directory fails with [`io::ErrorKind::NotADirectory`].
pub fn probe_writable(dir: &Path, probe_name: &str) -> Result<(), FileError> {
    let meta = fs::metadata(dir).map_err(io_err(format!("looking up {}", dir.display())))?;
    if !meta.is_dir() {
        return Err(FileError {
            action: format!("using {}", dir.display()),
            error: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let probe = dir.join(probe_name);
    fs::write(&probe, b"certplane write probe\n").map_err(io_err(format!(
        "creating the probe file {}",
        probe.display()
    )))?;
    fs::remove_file(&probe).map_err(io_err(format!(
        "deleting the probe file {}",
        probe.display()
    )))
}

/// Checks that a certificate id is safe in names built from it: 1..=128
/// characters of `[a-z0-9-]`, not starting with `-`. `usable` completes
/// the message, e.g. `"in a file name"`.
pub fn check_certificate_id(id: &str, usable: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "certificate id {id:?} is not usable {usable} (expected 1-128 characters of \
             [a-z0-9-], not starting with '-')"
        ))
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// Checks the `verify_host`, `verify_port` and `server_name` settings:
/// the port and the name need a (non-blank) host, and port 0 is refused.
pub fn check_verify_settings(
    verify_host: Option<&str>,
    verify_port: Option<u16>,
    server_name: Option<&str>,
) -> Result<(), ConnectorError> {
    if non_empty(verify_host).is_none() {
        if verify_port.is_some() {
            return Err(ConnectorError::invalid_config(
                "setting `verify_port` needs `verify_host`",
            ));
        }
        if server_name.is_some() {
            return Err(ConnectorError::invalid_config(
                "setting `server_name` needs `verify_host`",
            ));
        }
    }
    if verify_port == Some(0) {
        return Err(ConnectorError::invalid_config(
            "setting `verify_port` must be 1-65535",
        ));
    }
    Ok(())
}

/// Where the agent should verify, from the `verify_host`, `verify_port`
/// (default 443) and `server_name` settings (default the deployed
/// certificate's first DNS name, else the host); `None` without a
/// (non-blank) `verify_host`.
pub fn verify_endpoint(
    verify_host: Option<&str>,
    verify_port: Option<u16>,
    server_name: Option<&str>,
    dns_names: &[String],
) -> Option<Endpoint> {
    let host = non_empty(verify_host)?;
    let server_name = non_empty(server_name)
        .map(str::to_string)
        .or_else(|| dns_names.first().cloned())
        .unwrap_or_else(|| host.to_string());
    Some(Endpoint {
        host: host.to_string(),
        port: verify_port.unwrap_or(443),
        server_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_ids_and_the_message() {
        check_certificate_id("web-prod-01", "in a file name").unwrap();
        for bad in ["", "-x", "a/b", "A", &"a".repeat(129)] {
            let e = check_certificate_id(bad, "in a file name").unwrap_err();
            assert!(e.contains("is not usable in a file name"), "{e}");
        }
    }

    #[test]
    fn verify_settings_and_endpoint() {
        check_verify_settings(None, None, None).unwrap();
        for (host, port, name, needle) in [
            (None, Some(443), None, "`verify_port` needs"),
            (Some("  "), None, Some("x"), "`server_name` needs"),
            (Some("h"), Some(0), None, "1-65535"),
        ] {
            let e = check_verify_settings(host, port, name).unwrap_err();
            assert_eq!(e.kind(), "invalid-config");
            assert!(e.message().contains(needle), "{}", e.message());
        }
        assert!(verify_endpoint(Some(" "), Some(1), None, &[]).is_none());
        let e = verify_endpoint(Some(" lb "), None, Some(" "), &["a.test".into()]).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.server_name.as_str()),
            ("lb", 443, "a.test")
        );
        let e = verify_endpoint(Some("lb"), Some(8443), None, &[]).unwrap();
        assert_eq!((e.port, e.server_name.as_str()), (8443, "lb"));
    }
}
