//! The files of files mode, on plain `std::fs` so the same code runs inside
//! the component (through the granted preopen) and natively in unit tests:
//! `<id>/fullchain.pem` and `<id>/privkey.pem` under the granted directory,
//! each replaced atomically, and put back as they were when Caddy refuses
//! the new pair.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use certplane_sdk::files::{FileError, TMP_SUFFIX, probe_writable};
use certplane_sdk::files::{tmp_path, write_atomic};

/// The certificate file: leaf, then the chain.
pub const FULLCHAIN: &str = "fullchain.pem";
/// The private key file.
pub const PRIVKEY: &str = "privkey.pem";

/// The two files of `certificate_id` under `base`: (fullchain, privkey).
pub fn paths(base: &Path, certificate_id: &str) -> (PathBuf, PathBuf) {
    let dir = base.join(certificate_id);
    (dir.join(FULLCHAIN), dir.join(PRIVKEY))
}

/// What a deploy wrote, with what each file held before, so it can be
/// undone.
#[derive(Debug, Default)]
pub struct Staged {
    /// (path, previous contents or `None` when it did not exist), in the
    /// order written.
    written: Vec<(PathBuf, Option<Vec<u8>>)>,
    /// The certificate's directory, when this deploy created it.
    created_dir: Option<PathBuf>,
}

impl Staged {
    /// The files rewritten (their contents differed).
    pub fn written(&self) -> impl Iterator<Item = &Path> {
        self.written.iter().map(|(p, _)| p.as_path())
    }

    /// Whether nothing was rewritten.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// Puts every file back as it was (removing those that did not exist,
    /// and the directory when this deploy created it).
    pub fn rollback(self) -> Result<(), FileError> {
        for (path, previous) in self.written.into_iter().rev() {
            match previous {
                Some(bytes) => {
                    write_atomic(&path, &bytes)?;
                }
                None => remove_file(&path).map(drop)?,
            }
        }
        if let Some(dir) = self.created_dir {
            // Fails when something else was put there meanwhile: keep it.
            let _ = fs::remove_dir(dir);
        }
        Ok(())
    }
}

/// Writes the key and the full chain of `certificate_id` under `base`,
/// each atomically and only when its content differs.
pub fn stage(
    base: &Path,
    certificate_id: &str,
    fullchain: &str,
    key: &str,
) -> Result<Staged, FileError> {
    let dir = base.join(certificate_id);
    let mut staged = Staged::default();
    match fs::create_dir(&dir) {
        Ok(()) => staged.created_dir = Some(dir.clone()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(FileError {
                action: format!("creating {}", dir.display()),
                error: e,
            });
        }
    }
    let (fullchain_path, key_path) = paths(base, certificate_id);
    // The key first: a full chain whose key is not there yet would be a
    // pair Caddy refuses, should it reload in between.
    for (path, contents) in [(key_path, key), (fullchain_path, fullchain)] {
        let previous = match fs::read(&path) {
            Ok(bytes) if bytes == contents.as_bytes() => continue,
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                let error = FileError {
                    action: format!("reading {}", path.display()),
                    error: e,
                };
                return Err(undo(staged, error));
            }
        };
        if let Err(error) = write_atomic(&path, contents.as_bytes()) {
            return Err(undo(staged, error));
        }
        staged.written.push((path, previous));
    }
    Ok(staged)
}

/// Undoes a partial stage; the first error is the one reported.
fn undo(staged: Staged, error: FileError) -> FileError {
    match staged.rollback() {
        Ok(()) => error,
        Err(second) => FileError {
            action: format!("{error}; and undoing the files written: {}", second.action),
            error: second.error,
        },
    }
}

/// Removes the files of `certificate_id` (and leftover temporary files),
/// then its directory when empty. Missing files are not an error. Returns
/// what it removed.
pub fn remove(base: &Path, certificate_id: &str) -> Result<Vec<PathBuf>, FileError> {
    let dir = base.join(certificate_id);
    let mut removed = Vec::new();
    for name in [FULLCHAIN, PRIVKEY] {
        let path = dir.join(name);
        for p in [tmp_path(&path), path] {
            if remove_file(&p)? {
                removed.push(p);
            }
        }
    }
    // Fails when missing or holding files certplane did not write: keep it.
    if fs::remove_dir(&dir).is_ok() {
        removed.push(dir);
    }
    Ok(removed)
}

/// Whether it removed the file.
fn remove_file(path: &Path) -> Result<bool, FileError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(FileError {
            action: format!("removing {}", path.display()),
            error: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in walk(dir) {
            out.push(e.strip_prefix(dir).unwrap().display().to_string());
        }
        out.sort();
        out
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
        out
    }

    fn read(p: PathBuf) -> String {
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn staging_writes_what_differs_and_rolls_back() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        let staged = stage(base, "web", "CHAIN1", "KEY1").unwrap();
        let written: Vec<_> = staged.written().map(Path::to_path_buf).collect();
        assert_eq!(
            written,
            [base.join("web/privkey.pem"), base.join("web/fullchain.pem")]
        );
        assert_eq!(
            listing(base),
            ["web", "web/fullchain.pem", "web/privkey.pem"]
        );
        // The same again writes nothing.
        assert!(stage(base, "web", "CHAIN1", "KEY1").unwrap().is_empty());
        // A new certificate with the same key rewrites the chain only, and
        // its rollback restores it.
        let staged = stage(base, "web", "CHAIN2", "KEY1").unwrap();
        assert_eq!(staged.written().count(), 1);
        assert_eq!(read(base.join("web/fullchain.pem")), "CHAIN2");
        staged.rollback().unwrap();
        assert_eq!(read(base.join("web/fullchain.pem")), "CHAIN1");
        assert_eq!(read(base.join("web/privkey.pem")), "KEY1");
        // The rollback of a first deploy leaves nothing behind.
        let staged = stage(base, "api", "C", "K").unwrap();
        staged.rollback().unwrap();
        assert_eq!(
            listing(base),
            ["web", "web/fullchain.pem", "web/privkey.pem"]
        );
        assert!(!listing(base).iter().any(|p| p.contains(TMP_SUFFIX)));
    }

    #[test]
    fn a_failed_stage_leaves_the_previous_files() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        stage(base, "web", "CHAIN1", "KEY1").unwrap();
        // fullchain.pem cannot be replaced (a non-empty directory there).
        fs::remove_file(base.join("web/fullchain.pem")).unwrap();
        fs::create_dir(base.join("web/fullchain.pem")).unwrap();
        fs::write(base.join("web/fullchain.pem/x"), "").unwrap();
        let e = stage(base, "web", "CHAIN2", "KEY2").unwrap_err();
        assert!(e.action.starts_with("reading "), "{e}");
        assert_eq!(read(base.join("web/privkey.pem")), "KEY1");
    }

    #[test]
    fn remove_deletes_the_files_and_tolerates_missing_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        stage(base, "web", "C", "K").unwrap();
        fs::write(base.join("web/.fullchain.pem.certplane-tmp"), "x").unwrap();
        fs::write(base.join("other.pem"), "keep").unwrap();
        let removed = remove(base, "web").unwrap();
        assert_eq!(removed.len(), 4, "{removed:?}");
        assert_eq!(listing(base), ["other.pem"]);
        assert!(remove(base, "web").unwrap().is_empty());
        // A directory holding the operator's files stays.
        stage(base, "mixed", "C", "K").unwrap();
        fs::write(base.join("mixed/notes.txt"), "mine").unwrap();
        remove(base, "mixed").unwrap();
        assert_eq!(listing(base), ["mixed", "mixed/notes.txt", "other.pem"]);
    }

    #[test]
    fn probe() {
        let tmp = tempfile::tempdir().unwrap();
        probe_writable(tmp.path(), ".probe").unwrap();
        assert!(listing(tmp.path()).is_empty());
        let e = probe_writable(&tmp.path().join("missing"), ".probe").unwrap_err();
        assert!(e.to_string().starts_with("looking up "), "{e}");
    }
}
