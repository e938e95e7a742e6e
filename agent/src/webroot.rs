//! Token files of http-01 challenges in the local web server's webroot:
//! `<webroot>/.well-known/acme-challenge/<token>`, content the key
//! authorization, mode 0644.
//!
//! The operator names the webroot; everything below it is untrusted (the
//! web content may be managed by others, and a symlinked `.well-known` can
//! point anywhere). So, as for target grants ([`crate::grants`]), nothing
//! below the webroot is reached by a path that could be re-pointed: each
//! directory is opened relative to the handle of its parent
//! (`/proc/self/fd/N/<name>`), the real path of the open handle is read
//! back from the kernel and must lie inside the webroot's, and the token
//! file is created (`O_EXCL`, which never follows a symlink), renamed and
//! unlinked by name inside the held directory (neither follows a symlink
//! either). A `.well-known` that is a symlink within the webroot is used;
//! one leading out of it is refused.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Longest token accepted (ACME tokens are 43 characters).
const MAX_TOKEN: usize = 256;
/// Longest key authorization accepted (token, '.', 43-character thumbprint).
const MAX_KEY_AUTHORIZATION: usize = 1024;
/// The directories below the webroot, in order.
const CHALLENGE_DIRS: [&str; 2] = [".well-known", "acme-challenge"];

/// Why a token could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum WebrootError {
    /// The token is not a base64url string the agent may use as a file name.
    #[error("token {0:?} is not 1 to 256 base64url characters")]
    BadToken(String),
    /// The key authorization is not what a web server should serve.
    #[error("the key authorization is not 1 to 1024 printable ASCII characters")]
    BadKeyAuthorization,
    /// The webroot itself cannot be used.
    #[error("webroot {}: {reason}", path.display())]
    Webroot {
        /// The configured webroot.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A directory below the webroot really lies outside it.
    #[error("{} really is {}, outside the webroot {}; refusing to write there", path.display(), real.display(), root.display())]
    Escapes {
        /// The path as spelled.
        path: PathBuf,
        /// Where it leads.
        real: PathBuf,
        /// The webroot, resolved.
        root: PathBuf,
    },
    /// A file operation failed.
    #[error("{what} {}: {error}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path as spelled below the webroot.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

/// The webroot the operator granted.
#[derive(Debug, Clone)]
pub struct Webroot {
    root: PathBuf,
}

/// Whether `token` may name a token file: base64url characters only (no
/// `.`, `/` or anything else a path could make use of).
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `value` is fit to be served as a key authorization: printable
/// ASCII, bounded.
pub fn valid_key_authorization(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_KEY_AUTHORIZATION
        && value.bytes().all(|b| b.is_ascii_graphic())
}

impl Webroot {
    /// The webroot at `root` (an absolute path; opened on each use).
    pub fn new(root: impl Into<PathBuf>) -> Webroot {
        Webroot { root: root.into() }
    }

    /// Where the token file of `token` is, as spelled.
    pub fn token_path(&self, token: &str) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(CHALLENGE_DIRS);
        path.join(token)
    }

    /// Writes `key_authorization` to the token file of `token` atomically
    /// (a temporary file renamed over it), mode 0644, creating the
    /// directories (0755) as needed. Returns the path written.
    pub fn write_token(
        &self,
        token: &str,
        key_authorization: &str,
    ) -> Result<PathBuf, WebrootError> {
        if !valid_token(token) {
            return Err(WebrootError::BadToken(token.to_string()));
        }
        if !valid_key_authorization(key_authorization) {
            return Err(WebrootError::BadKeyAuthorization);
        }
        let dir = self
            .challenge_dir(true)?
            .ok_or_else(|| self.webroot_error("the challenge directory vanished"))?;
        let path = self.token_path(token);
        let temp = format!(".{token}.{}.tmp", rand::random::<u64>());
        let io = |what, error| WebrootError::Io {
            what,
            path: path.clone(),
            error,
        };
        let temp_at = in_dir(&dir, &temp);
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temp_at)?;
            // The umask must not hide the token from the web server's user.
            file.set_permissions(Permissions::from_mode(0o644))?;
            file.write_all(key_authorization.as_bytes())?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp_at);
            return Err(io("cannot write", e));
        }
        if let Err(e) = std::fs::rename(&temp_at, in_dir(&dir, token)) {
            let _ = std::fs::remove_file(&temp_at);
            return Err(io("cannot rename the temporary file to", e));
        }
        Ok(path)
    }

    /// Removes the token file of `token`; `false` when there was none.
    pub fn remove_token(&self, token: &str) -> Result<bool, WebrootError> {
        if !valid_token(token) {
            return Err(WebrootError::BadToken(token.to_string()));
        }
        let Some(dir) = self.challenge_dir(false)? else {
            return Ok(false);
        };
        match std::fs::remove_file(in_dir(&dir, token)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(WebrootError::Io {
                what: "cannot remove",
                path: self.token_path(token),
                error: e,
            }),
        }
    }

    fn webroot_error(&self, reason: impl Into<String>) -> WebrootError {
        WebrootError::Webroot {
            path: self.root.clone(),
            reason: reason.into(),
        }
    }

    /// `<webroot>/.well-known/acme-challenge`, open and checked to lie
    /// inside the webroot; created when `create`, else `None` when a part
    /// of it does not exist.
    fn challenge_dir(&self, create: bool) -> Result<Option<File>, WebrootError> {
        let root = open_dir(&self.root)
            .map_err(|e| self.webroot_error(format!("cannot be opened: {e}")))?;
        let root_real = real_path(&root)
            .map_err(|e| self.webroot_error(format!("cannot read its real path: {e}")))?;
        let mut spelled = self.root.clone();
        let mut parent = root;
        for name in CHALLENGE_DIRS {
            spelled.push(name);
            let at = in_dir(&parent, name);
            let io = |what, error| WebrootError::Io {
                what,
                path: spelled.clone(),
                error,
            };
            let child = match open_dir(&at) {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                    match DirBuilder::new().mode(0o755).create(&at) {
                        Ok(()) => {
                            let made = open_dir(&at).map_err(|e| io("cannot open", e))?;
                            made.set_permissions(Permissions::from_mode(0o755))
                                .map_err(|e| io("cannot set the mode of", e))?;
                            tracing::info!(path = %spelled.display(), "created a challenge directory");
                            made
                        }
                        // Created meanwhile (another agent task), or a
                        // dangling symlink: open says which.
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                            open_dir(&at).map_err(|e| io("cannot open", e))?
                        }
                        Err(e) => return Err(io("cannot create", e)),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io("cannot open", e)),
            };
            let real = real_path(&child).map_err(|e| io("cannot read the real path of", e))?;
            if !real.starts_with(&root_real) {
                tracing::warn!(path = %spelled.display(), real = %real.display(),
                    webroot = %root_real.display(), "a challenge directory leaves the webroot");
                return Err(WebrootError::Escapes {
                    path: spelled,
                    real,
                    root: root_real,
                });
            }
            parent = child;
        }
        Ok(Some(parent))
    }
}

/// `name` inside the open directory `dir`, whatever its path names now.
fn in_dir(dir: &File, name: &str) -> PathBuf {
    Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

fn real_path(dir: &File) -> std::io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// Opens a directory (symlinks followed: where it leads is checked on the
/// handle); anything else fails with `ENOTDIR` before it is opened.
fn open_dir(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn webroot() -> (tempfile::TempDir, Webroot) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("www")).unwrap();
        let root = Webroot::new(tmp.path().join("www"));
        (tmp, root)
    }

    #[test]
    fn the_token_lands_below_the_webroot_with_mode_0644() {
        let (tmp, root) = webroot();
        let path = root.write_token("tok-EN_1", "tok-EN_1.thumb").unwrap();
        let expected = tmp.path().join("www/.well-known/acme-challenge/tok-EN_1");
        assert_eq!(path, expected);
        assert_eq!(
            std::fs::read_to_string(&expected).unwrap(),
            "tok-EN_1.thumb"
        );
        let mode = std::fs::metadata(&expected).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let dir_mode = std::fs::metadata(expected.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o755);
        // Written again: replaced, and no temporary file is left.
        root.write_token("tok-EN_1", "tok-EN_1.other").unwrap();
        assert_eq!(
            std::fs::read_to_string(&expected).unwrap(),
            "tok-EN_1.other"
        );
        let names: Vec<_> = std::fs::read_dir(expected.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("tok-EN_1")]);
    }

    #[test]
    fn withdraw_deletes_and_a_missing_file_is_fine() {
        let (tmp, root) = webroot();
        // Nothing written yet, not even the directories.
        assert!(!root.remove_token("abc").unwrap());
        assert!(!tmp.path().join("www/.well-known").exists());
        root.write_token("abc", "abc.x").unwrap();
        assert!(root.remove_token("abc").unwrap());
        assert!(
            !tmp.path()
                .join("www/.well-known/acme-challenge/abc")
                .exists()
        );
        assert!(!root.remove_token("abc").unwrap());
    }

    #[test]
    fn bad_tokens_and_values_are_refused() {
        let (tmp, root) = webroot();
        for token in ["", "../x", "a/b", "a.b", "..", "tök", &"a".repeat(257)] {
            assert!(
                matches!(root.write_token(token, "v"), Err(WebrootError::BadToken(_))),
                "{token:?}"
            );
            assert!(matches!(
                root.remove_token(token),
                Err(WebrootError::BadToken(_))
            ));
        }
        for value in ["", "a b", "a\nb", &"a".repeat(1025)] {
            assert!(matches!(
                root.write_token("t", value),
                Err(WebrootError::BadKeyAuthorization)
            ));
        }
        assert!(!tmp.path().join("www/.well-known").exists());
    }

    #[test]
    fn a_well_known_symlinked_outside_is_refused() {
        let (tmp, root) = webroot();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        symlink(&outside, tmp.path().join("www/.well-known")).unwrap();
        let err = root.write_token("tok", "tok.x").unwrap_err();
        assert!(matches!(err, WebrootError::Escapes { .. }), "{err}");
        assert!(err.to_string().contains("outside the webroot"), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert!(matches!(
            root.remove_token("tok"),
            Err(WebrootError::Escapes { .. })
        ));
        // The same through the inner directory.
        std::fs::remove_file(tmp.path().join("www/.well-known")).unwrap();
        std::fs::create_dir(tmp.path().join("www/.well-known")).unwrap();
        symlink(&outside, tmp.path().join("www/.well-known/acme-challenge")).unwrap();
        assert!(matches!(
            root.write_token("tok", "tok.x"),
            Err(WebrootError::Escapes { .. })
        ));
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn a_symlink_within_the_webroot_is_followed_and_a_planted_token_link_is_replaced() {
        let (tmp, root) = webroot();
        std::fs::create_dir_all(tmp.path().join("www/shared/acme-challenge")).unwrap();
        symlink("shared", tmp.path().join("www/.well-known")).unwrap();
        root.write_token("tok", "tok.x").unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("www/shared/acme-challenge/tok")).unwrap(),
            "tok.x"
        );
        // A symlink planted at the token's name is replaced, not written
        // through.
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let link = tmp.path().join("www/shared/acme-challenge/other");
        symlink(&victim, &link).unwrap();
        root.write_token("other", "other.x").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
        // Removing a planted link removes the link, not its target.
        symlink(&victim, tmp.path().join("www/shared/acme-challenge/third")).unwrap();
        assert!(root.remove_token("third").unwrap());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }

    #[test]
    fn a_missing_webroot_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Webroot::new(tmp.path().join("nope"));
        let err = root.write_token("tok", "tok.x").unwrap_err();
        assert!(matches!(err, WebrootError::Webroot { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
