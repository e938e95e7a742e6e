//! The file work of the `nginx` target, on plain `std::fs` so it runs the
//! same inside the component (through the granted preopen) and natively in
//! unit tests (in a temporary directory).
//!
//! A change of the files is a small transaction. A journal file lists the
//! files about to change (and whether each existed) before the first one
//! is touched; a file is replaced by hard-linking the current one to a
//! backup name and renaming a fully written temporary file over it, so the
//! previous file (its bytes, mode, owner and times) survives under the
//! backup name. Undoing renames the backups back; finishing deletes them.
//! The journal is marked committed once nginx loaded the new files and is
//! deleted last. A journal found at the start of a call is a transaction
//! an earlier call could not finish (it was stopped at its deadline): a
//! pending one is rolled back, so the files again are what nginx last
//! accepted; a committed one is only cleaned up.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use certplane_sdk::files::{self, hidden_sibling, io_err, tmp_path};
pub use certplane_sdk::files::{FileError, TMP_SUFFIX, probe_writable, remove_file};
use serde::{Deserialize, Serialize};

/// The placeholder a file name pattern uses for the certificate id.
pub const ID_PLACEHOLDER: &str = "<id>";

/// Suffix of the backups of replaced or removed files.
pub const BACKUP_SUFFIX: &str = ".certplane-prev";

/// Largest file the connector reads back (an existing certificate or key
/// file, the journal): anything bigger is not what it wrote.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Checks that a certificate id is safe inside a file name: 1..=128
/// characters of `[a-z0-9-]`, not starting with `-`.
pub fn check_certificate_id(id: &str) -> Result<(), String> {
    files::check_certificate_id(id, "in a file name")
}

/// The relative path `pattern` names for certificate `id`: every `<id>`
/// replaced. Fails unless the result is a relative path of plain names
/// (no `..`, `.`, root or empty components), so it stays inside the
/// granted directory.
pub fn expand(pattern: &str, id: &str) -> Result<PathBuf, String> {
    let expanded = pattern.replace(ID_PLACEHOLDER, id);
    let path = PathBuf::from(&expanded);
    let plain = !expanded.is_empty()
        && !expanded.ends_with('/')
        && !expanded.contains("//")
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(format!(
            "file name pattern {pattern:?} must be a relative path of plain names inside the \
             directory (no '..', '.', leading '/' or empty parts), e.g. \"<id>/fullchain.pem\""
        ));
    }
    let hidden_ours = path.components().any(|c| {
        let name = c.as_os_str().to_string_lossy();
        name.ends_with(TMP_SUFFIX)
            || name.ends_with(BACKUP_SUFFIX)
            || name.starts_with(JOURNAL_PREFIX)
    });
    if hidden_ours {
        return Err(format!(
            "file name pattern {pattern:?} names one of the connector's own working files"
        ));
    }
    Ok(path)
}

/// One file of a certificate: where (relative to the directory) and what
/// it must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Path relative to the granted directory.
    pub rel: PathBuf,
    /// The exact bytes.
    pub contents: Vec<u8>,
}

/// Prefix of the journal files, one per certificate id, in the directory.
const JOURNAL_PREFIX: &str = ".certplane-nginx-";

/// The files a transaction changes and the directories it created, so it
/// can be undone or finished by this call or, after an interruption, by
/// the next one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// nginx loaded the new files: only the backups remain to be deleted.
    #[serde(default)]
    pub committed: bool,
    /// Files in the order they are changed.
    pub files: Vec<JournalFile>,
    /// Directories created for the new files, parents first.
    #[serde(default)]
    pub created_dirs: Vec<PathBuf>,
}

/// One file of a [`Journal`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalFile {
    /// Path relative to the granted directory.
    pub rel: PathBuf,
    /// Whether it existed before (its backup then holds it once it is
    /// replaced or removed).
    pub existed: bool,
}

/// The journal's path for certificate `id`.
pub fn journal_path(base: &Path, id: &str) -> PathBuf {
    base.join(format!("{JOURNAL_PREFIX}{id}.journal"))
}

impl Journal {
    /// Reads the journal an interrupted call left for `id`, if any.
    pub fn read(base: &Path, id: &str) -> Result<Option<Journal>, FileError> {
        let path = journal_path(base, id);
        let Some(bytes) = read_optional(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| FileError {
                action: format!(
                    "reading the journal {} (check the certificate files and their \
                     {BACKUP_SUFFIX} backups, then delete it)",
                    path.display()
                ),
                error: io::Error::new(io::ErrorKind::InvalidData, e),
            })
    }

    /// Writes the journal atomically.
    pub fn write(&self, base: &Path, id: &str) -> Result<(), FileError> {
        let path = journal_path(base, id);
        let bytes = serde_json::to_vec(self).map_err(|e| FileError {
            action: format!("encoding the journal {}", path.display()),
            error: io::Error::other(e),
        })?;
        write_atomic(&path, &bytes).map(drop)
    }

    /// Puts every file back as it was (renaming its backup over it, or
    /// deleting it when it did not exist) and removes the directories the
    /// transaction created when they are empty again; then deletes the
    /// journal. Returns a line per file or directory changed.
    pub fn roll_back(&self, base: &Path, id: &str) -> Result<Vec<String>, FileError> {
        let mut changed = Vec::new();
        for file in &self.files {
            let path = base.join(&file.rel);
            let _ = fs::remove_file(tmp_path(&path));
            if !file.existed {
                remove_file(&path, &mut changed)?;
                continue;
            }
            let backup = backup_path(&path);
            // No backup: the file was never replaced.
            if !exists(&backup)? {
                continue;
            }
            fs::rename(&backup, &path).map_err(io_err(format!(
                "renaming {} back to {}",
                backup.display(),
                path.display()
            )))?;
            // rename(2) between two links of one file does nothing: the
            // backup is then still there, an extra link of the original.
            let mut ignored = Vec::new();
            remove_file(&backup, &mut ignored)?;
            changed.push(format!("restored {}", path.display()));
        }
        for dir in self.created_dirs.iter().rev() {
            let path = base.join(dir);
            // Fails when something else now lives in it: then it stays.
            if fs::remove_dir(&path).is_ok() {
                changed.push(format!("removed {}", path.display()));
            }
        }
        Journal::remove(base, id)?;
        Ok(changed)
    }

    /// Deletes the backups and then the journal: the transaction is over.
    pub fn finish(&self, base: &Path, id: &str) -> Result<(), FileError> {
        let mut ignored = Vec::new();
        for file in &self.files {
            remove_file(&backup_path(&base.join(&file.rel)), &mut ignored)?;
        }
        Journal::remove(base, id)
    }

    fn remove(base: &Path, id: &str) -> Result<(), FileError> {
        let mut ignored = Vec::new();
        remove_file(&journal_path(base, id), &mut ignored)
    }
}

/// `dir/.name.certplane-prev` for `dir/name`.
pub fn backup_path(path: &Path) -> PathBuf {
    hidden_sibling(path, BACKUP_SUFFIX)
}

fn exists(path: &Path) -> Result<bool, FileError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(FileError {
            action: format!("looking up {}", path.display()),
            error: e,
        }),
    }
}

/// Replaces `path` with `contents`, keeping the current file (when
/// `existed`) as its backup: a hard link made before a fully written
/// temporary file is renamed over `path`, so `path` always holds either
/// the old or the new bytes. Does nothing when the file already holds
/// `contents`. Returns whether it wrote.
pub fn replace(path: &Path, contents: &[u8], existed: bool) -> Result<bool, FileError> {
    if read_optional(path).ok().flatten().as_deref() == Some(contents) {
        return Ok(false);
    }
    if existed {
        let backup = backup_path(path);
        // A backup left by someone else's meddling would make the link fail.
        let mut ignored = Vec::new();
        remove_file(&backup, &mut ignored)?;
        fs::hard_link(path, &backup).map_err(io_err(format!(
            "keeping {} as {}",
            path.display(),
            backup.display()
        )))?;
    }
    write_atomic(path, contents)
}

/// Moves `path` to its backup name (nginx no longer finds it; undoing
/// renames it back). Returns whether it existed.
pub fn set_aside(path: &Path) -> Result<bool, FileError> {
    match fs::rename(path, backup_path(path)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(FileError {
            action: format!("moving {} aside", path.display()),
            error: e,
        }),
    }
}

/// The current bytes of `path`; `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, FileError> {
    match fs::metadata(path) {
        Ok(meta) if meta.len() > MAX_FILE_BYTES => {
            return Err(FileError {
                action: format!("reading {}", path.display()),
                error: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} bytes is more than a certificate file holds", meta.len()),
                ),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(FileError {
                action: format!("looking up {}", path.display()),
                error: e,
            });
        }
    }
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FileError {
            action: format!("reading {}", path.display()),
            error: e,
        }),
    }
}

/// Creates the missing parent directories of `rel` under `base`; returns
/// those it created (relative, parents first).
pub fn create_parents(base: &Path, rel: &Path) -> Result<Vec<PathBuf>, FileError> {
    let mut created = Vec::new();
    let mut dir = PathBuf::new();
    let Some(parent) = rel.parent() else {
        return Ok(created);
    };
    for component in parent.components() {
        dir.push(component);
        let path = base.join(&dir);
        match fs::create_dir(&path) {
            Ok(()) => created.push(dir.clone()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => {
                return Err(FileError {
                    action: format!("creating {}", path.display()),
                    error: e,
                });
            }
        }
    }
    Ok(created)
}

/// Removes the now empty parent directories of `rel` under `base`, deepest
/// first, stopping at the first one that is not empty. Adds a line per
/// directory removed.
pub fn remove_empty_parents(base: &Path, rel: &Path, changed: &mut Vec<String>) {
    let mut dir = rel.parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
        let path = base.join(d);
        if fs::remove_dir(&path).is_err() {
            break;
        }
        changed.push(format!("removed {}", path.display()));
        dir = d.parent();
    }
}

/// Writes `contents` to `path` through a temporary file and a rename (a
/// reader at any moment sees the old or the new bytes, never a mix),
/// unless the file already holds exactly `contents`. Returns whether it
/// wrote.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<bool, FileError> {
    if read_optional(path).ok().flatten().as_deref() == Some(contents) {
        return Ok(false);
    }
    files::write_atomic(path, contents).map(|()| true)
}

// The tests compare inodes and modes (std::os::unix): they run natively.
#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn patterns_expand_inside_the_directory_only() {
        assert_eq!(
            expand("<id>/fullchain.pem", "web").unwrap(),
            PathBuf::from("web/fullchain.pem")
        );
        assert_eq!(
            expand("live/<id>-<id>.pem", "a").unwrap(),
            PathBuf::from("live/a-a.pem")
        );
        assert_eq!(
            expand("site.pem", "web").unwrap(),
            PathBuf::from("site.pem")
        );
        for bad in [
            "",
            "/etc/nginx/<id>.pem",
            "../<id>.pem",
            "<id>/../../x.pem",
            "./<id>.pem",
            "<id>//x.pem",
            "<id>/",
            ".certplane-nginx-<id>.journal",
            "<id>/.x.pem.certplane-tmp",
            "<id>/.x.pem.certplane-prev",
        ] {
            assert!(expand(bad, "web").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids() {
        assert!(check_certificate_id("web-prod-01").is_ok());
        for bad in ["", "-x", "Web", "a/b", "..", "a.b", "a_b", &"a".repeat(129)] {
            assert!(check_certificate_id(bad).is_err(), "{bad}");
        }
    }

    /// Bytes, modification time, inode and mode of a file.
    fn state(path: &Path) -> (Vec<u8>, std::time::SystemTime, u64, u32) {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(path).unwrap();
        (
            fs::read(path).unwrap(),
            meta.modified().unwrap(),
            meta.ino(),
            meta.mode(),
        )
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_rollback_brings_back_the_very_same_files() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        fs::create_dir(base.join("old")).unwrap();
        fs::write(base.join("old/a.pem"), b"A0").unwrap();
        fs::write(base.join("old/gone.pem"), b"G0").unwrap();
        // A mode the connector could not recreate (WASI sets none).
        fs::set_permissions(base.join("old/a.pem"), fs::Permissions::from_mode(0o600)).unwrap();
        let a0 = state(&base.join("old/a.pem"));
        let g0 = state(&base.join("old/gone.pem"));
        let journal = Journal {
            committed: false,
            files: vec![
                JournalFile {
                    rel: "old/a.pem".into(),
                    existed: true,
                },
                JournalFile {
                    rel: "old/gone.pem".into(),
                    existed: true,
                },
                JournalFile {
                    rel: "new/deep/b.pem".into(),
                    existed: false,
                },
            ],
            created_dirs: vec!["new".into(), "new/deep".into()],
        };
        journal.write(base, "web").unwrap();
        assert_eq!(Journal::read(base, "web").unwrap().unwrap(), journal);
        assert!(replace(&base.join("old/a.pem"), b"A1", true).unwrap());
        assert!(!replace(&base.join("old/a.pem"), b"A1", true).unwrap());
        assert!(set_aside(&base.join("old/gone.pem")).unwrap());
        assert!(!set_aside(&base.join("old/never.pem")).unwrap());
        assert_eq!(
            create_parents(base, Path::new("new/deep/b.pem")).unwrap(),
            [PathBuf::from("new"), PathBuf::from("new/deep")]
        );
        assert!(replace(&base.join("new/deep/b.pem"), b"B1", false).unwrap());
        assert_eq!(fs::read(base.join("old/a.pem")).unwrap(), b"A1");
        assert_eq!(
            entries(&base.join("old")),
            [".a.pem.certplane-prev", ".gone.pem.certplane-prev", "a.pem"]
        );

        let changed = journal.roll_back(base, "web").unwrap();
        assert_eq!(changed.len(), 5, "{changed:?}");
        assert_eq!(state(&base.join("old/a.pem")), a0);
        assert_eq!(state(&base.join("old/gone.pem")), g0);
        assert_eq!(entries(base), ["old"]);
        assert_eq!(entries(&base.join("old")), ["a.pem", "gone.pem"]);
    }

    #[test]
    fn finishing_deletes_the_backups_and_the_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        fs::write(base.join("a.pem"), b"A0").unwrap();
        let journal = Journal {
            committed: true,
            files: vec![JournalFile {
                rel: "a.pem".into(),
                existed: true,
            }],
            created_dirs: vec![],
        };
        journal.write(base, "web").unwrap();
        replace(&base.join("a.pem"), b"A1", true).unwrap();
        journal.finish(base, "web").unwrap();
        assert_eq!(entries(base), ["a.pem"]);
        assert_eq!(fs::read(base.join("a.pem")).unwrap(), b"A1");
    }

    #[test]
    fn a_rollback_after_the_link_but_before_the_rename_keeps_the_original() {
        // Interrupted between the hard link and the rename: the backup and
        // the file are two links of the original.
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        fs::write(base.join("a.pem"), b"A0").unwrap();
        let a0 = state(&base.join("a.pem"));
        fs::hard_link(base.join("a.pem"), base.join(".a.pem.certplane-prev")).unwrap();
        fs::write(base.join(".a.pem.certplane-tmp"), b"half").unwrap();
        let journal = Journal {
            committed: false,
            files: vec![JournalFile {
                rel: "a.pem".into(),
                existed: true,
            }],
            created_dirs: vec![],
        };
        journal.write(base, "web").unwrap();
        journal.roll_back(base, "web").unwrap();
        assert_eq!(entries(base), ["a.pem"]);
        assert_eq!(state(&base.join("a.pem")).0, a0.0);
        assert_eq!(state(&base.join("a.pem")).2, a0.2);
    }

    #[test]
    fn a_corrupt_journal_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(journal_path(tmp.path(), "web"), b"{not json").unwrap();
        let e = Journal::read(tmp.path(), "web").unwrap_err();
        assert!(
            e.to_string().contains(".certplane-nginx-web.journal"),
            "{e}"
        );
    }

    #[test]
    fn writes_are_atomic_and_skipped_when_equal() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.pem");
        assert!(write_atomic(&path, b"one").unwrap());
        assert!(!write_atomic(&path, b"one").unwrap());
        assert!(write_atomic(&path, b"two").unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!tmp_path(&path).exists());

        // The target is a directory: the rename fails and no temporary
        // file is left behind.
        fs::create_dir(tmp.path().join("d.pem")).unwrap();
        fs::write(tmp.path().join("d.pem/x"), "").unwrap();
        let e = write_atomic(&tmp.path().join("d.pem"), b"data").unwrap_err();
        assert!(e.action.starts_with("renaming "), "{e}");
        assert!(!tmp.path().join(".d.pem.certplane-tmp").exists());
    }

    #[test]
    fn empty_parents_go_and_others_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        fs::create_dir_all(base.join("a/b")).unwrap();
        fs::write(base.join("a/keep"), "").unwrap();
        let mut changed = Vec::new();
        remove_empty_parents(base, Path::new("a/b/f.pem"), &mut changed);
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert!(base.join("a/keep").exists());
        remove_empty_parents(base, Path::new("f.pem"), &mut changed);
        assert!(base.exists());
    }

    #[test]
    fn probe() {
        let tmp = tempfile::tempdir().unwrap();
        probe_writable(tmp.path(), ".probe").unwrap();
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
        let e = probe_writable(&tmp.path().join("missing"), ".probe").unwrap_err();
        assert!(e.to_string().starts_with("looking up "), "{e}");
        fs::write(tmp.path().join("file"), "").unwrap();
        let e = probe_writable(&tmp.path().join("file"), ".probe").unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
