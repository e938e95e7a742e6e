//! The file work of the `pem-files` target, on plain `std::fs` so it runs the
//! same inside the component (through the granted preopen) and natively in
//! unit tests (in a temporary directory).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use certplane_sdk::files::{self, io_err, remove_file, tmp_path};
pub use certplane_sdk::files::{FileError, TMP_SUFFIX, probe_writable};
use serde::Deserialize;

/// How files are laid out for one managed certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `<id>/cert.pem`, `<id>/chain.pem`, `<id>/fullchain.pem`,
    /// `<id>/privkey.pem` (the certbot layout nginx and most servers expect).
    #[default]
    Split,
    /// One `<id>.pem` holding the key, then the leaf, then the chain
    /// (HAProxy style). Replaced atomically as a whole.
    Combined,
}

/// File names of the split layout, in the order they are written.
pub const SPLIT_FILES: [&str; 4] = ["privkey.pem", "cert.pem", "chain.pem", "fullchain.pem"];

/// What to write for one certificate.
#[derive(Clone, Debug)]
pub struct Material {
    /// The managed certificate's id (`[a-z0-9-]`), used in file names.
    pub certificate_id: String,
    /// The leaf, PEM, ending with a newline.
    pub cert: String,
    /// The intermediates, PEM, leaf-nearest first, each ending with a newline.
    pub chain: Vec<String>,
    /// The private key, PEM, ending with a newline.
    pub key: String,
}

/// Checks that a certificate id is safe as a file name: 1..=128 characters
/// of `[a-z0-9-]`, not starting with `-`.
pub fn check_certificate_id(id: &str) -> Result<(), String> {
    files::check_certificate_id(id, "as a file name")
}

impl Material {
    fn fullchain(&self) -> String {
        let mut s = self.cert.clone();
        for c in &self.chain {
            s.push_str(c);
        }
        s
    }

    /// The files of `layout` for this certificate, relative to the base
    /// directory, with their contents.
    pub fn files(&self, layout: Layout) -> Vec<(PathBuf, String)> {
        let id = &self.certificate_id;
        match layout {
            Layout::Split => {
                let dir = PathBuf::from(id);
                vec![
                    (dir.join("privkey.pem"), self.key.clone()),
                    (dir.join("cert.pem"), self.cert.clone()),
                    (dir.join("chain.pem"), self.chain.concat()),
                    (dir.join("fullchain.pem"), self.fullchain()),
                ]
            }
            Layout::Combined => {
                vec![(
                    PathBuf::from(format!("{id}.pem")),
                    format!("{}{}", self.key, self.fullchain()),
                )]
            }
        }
    }
}

/// Writes `material` under `base` in `layout`, each file atomically (a
/// temporary file in the same directory, flushed, then renamed over the
/// target). Files whose content is already right are left alone, so a
/// repeated deploy changes nothing. Files of the other layout for the same
/// certificate are removed (a layout change must not leave an old key
/// behind).
///
/// Returns a line per file written or removed, e.g. `wrote /certs/web/cert.pem`.
pub fn deploy(base: &Path, layout: Layout, material: &Material) -> Result<Vec<String>, FileError> {
    let mut changed = Vec::new();
    if layout == Layout::Split {
        let dir = base.join(&material.certificate_id);
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    }
    for (rel, contents) in material.files(layout) {
        let path = base.join(rel);
        if write_atomic(&path, contents.as_bytes())? {
            changed.push(format!("wrote {}", path.display()));
        }
    }
    let other = match layout {
        Layout::Split => Layout::Combined,
        Layout::Combined => Layout::Split,
    };
    changed.extend(remove_layout(base, &material.certificate_id, other)?);
    Ok(changed)
}

/// Whether [`deploy`] would write or remove anything: a file of `layout`
/// is missing or differs, or a file of the other layout is there. Reads
/// only.
pub fn would_change(base: &Path, layout: Layout, material: &Material) -> bool {
    let differs = material.files(layout).into_iter().any(|(rel, contents)| {
        fs::read(base.join(rel)).map_or(true, |have| have != contents.as_bytes())
    });
    let other = match layout {
        Layout::Split => Layout::Combined,
        Layout::Combined => Layout::Split,
    };
    differs || layout_present(base, &material.certificate_id, other)
}

/// Whether anything [`deploy`] may have written for `certificate_id` is
/// there, i.e. whether [`remove`] would find something. Reads only.
pub fn present(base: &Path, certificate_id: &str) -> bool {
    layout_present(base, certificate_id, Layout::Split)
        || layout_present(base, certificate_id, Layout::Combined)
}

fn layout_present(base: &Path, id: &str, layout: Layout) -> bool {
    match layout {
        // The directory alone counts: `remove` deletes it when empty.
        Layout::Split => base.join(id).symlink_metadata().is_ok(),
        Layout::Combined => {
            let path = base.join(format!("{id}.pem"));
            path.symlink_metadata().is_ok() || tmp_path(&path).symlink_metadata().is_ok()
        }
    }
}

/// The hidden file that says a post-deploy action is still owed for
/// `certificate_id`: written before files change, deleted once the action
/// succeeded. A deploy that finds it runs the action even when nothing
/// changes, so a failed or interrupted action is not forgotten.
pub fn pending_action_path(base: &Path, certificate_id: &str) -> PathBuf {
    base.join(format!(".{certificate_id}.certplane-action-pending"))
}

/// Records that `action` is owed for `certificate_id`.
pub fn mark_action_pending(
    base: &Path,
    certificate_id: &str,
    action: &str,
) -> Result<(), FileError> {
    let path = pending_action_path(base, certificate_id);
    fs::write(&path, format!("{action}\n")).map_err(io_err(format!("writing {}", path.display())))
}

/// Whether an action is owed for `certificate_id`.
pub fn action_pending(base: &Path, certificate_id: &str) -> bool {
    pending_action_path(base, certificate_id)
        .symlink_metadata()
        .is_ok()
}

/// Clears the record of an owed action; a missing record is fine.
pub fn clear_action_pending(base: &Path, certificate_id: &str) -> Result<(), FileError> {
    let path = pending_action_path(base, certificate_id);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FileError {
            action: format!("removing {}", path.display()),
            error: e,
        }),
    }
}

/// Removes every file `deploy` may have written for `certificate_id` (both
/// layouts, and leftover temporary files). Missing files are not an error.
/// Returns a line per file or directory removed.
pub fn remove(base: &Path, certificate_id: &str) -> Result<Vec<String>, FileError> {
    let mut changed = remove_layout(base, certificate_id, Layout::Split)?;
    changed.extend(remove_layout(base, certificate_id, Layout::Combined)?);
    Ok(changed)
}

fn remove_layout(base: &Path, id: &str, layout: Layout) -> Result<Vec<String>, FileError> {
    let mut changed = Vec::new();
    match layout {
        Layout::Split => {
            let dir = base.join(id);
            for name in SPLIT_FILES {
                remove_file(&dir.join(name), &mut changed)?;
                remove_file(&tmp_path(&dir.join(name)), &mut changed)?;
            }
            // Fails when missing or holding files we did not write: leave it.
            if fs::remove_dir(&dir).is_ok() {
                changed.push(format!("removed {}", dir.display()));
            }
        }
        Layout::Combined => {
            let path = base.join(format!("{id}.pem"));
            remove_file(&path, &mut changed)?;
            remove_file(&tmp_path(&path), &mut changed)?;
        }
    }
    Ok(changed)
}

/// Writes `contents` to `path` through a temporary file and a rename, unless
/// the file already holds exactly `contents`. Returns whether it wrote.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<bool, FileError> {
    match fs::read(path) {
        Ok(existing) if existing == contents => return Ok(false),
        _ => {}
    }
    files::write_atomic(path, contents).map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material(id: &str, n: u8) -> Material {
        Material {
            certificate_id: id.into(),
            cert: format!("-----BEGIN CERTIFICATE-----\nLEAF{n}\n-----END CERTIFICATE-----\n"),
            chain: vec![
                "-----BEGIN CERTIFICATE-----\nINT\n-----END CERTIFICATE-----\n".into(),
                "-----BEGIN CERTIFICATE-----\nINT2\n-----END CERTIFICATE-----\n".into(),
            ],
            key: format!("-----BEGIN PRIVATE KEY-----\nKEY{n}\n-----END PRIVATE KEY-----\n"),
        }
    }

    fn read(p: PathBuf) -> String {
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

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

    #[test]
    fn split_layout_is_written_idempotently() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        let m = material("web-prod", 1);
        let changed = deploy(base, Layout::Split, &m).unwrap();
        assert_eq!(changed.len(), 4, "{changed:?}");
        assert!(changed[0].ends_with("web-prod/privkey.pem"));
        assert_eq!(
            listing(base),
            [
                "web-prod",
                "web-prod/cert.pem",
                "web-prod/chain.pem",
                "web-prod/fullchain.pem",
                "web-prod/privkey.pem"
            ]
        );
        let dir = base.join("web-prod");
        assert_eq!(read(dir.join("cert.pem")), m.cert);
        assert_eq!(read(dir.join("privkey.pem")), m.key);
        assert_eq!(read(dir.join("chain.pem")), m.chain.concat());
        assert_eq!(
            read(dir.join("fullchain.pem")),
            format!("{}{}", m.cert, m.chain.concat())
        );

        // Same bundle again: nothing changes.
        assert!(deploy(base, Layout::Split, &m).unwrap().is_empty());

        // A renewal rewrites what differs (the chain is the same).
        let m2 = material("web-prod", 2);
        let changed = deploy(base, Layout::Split, &m2).unwrap();
        assert_eq!(changed.len(), 3, "{changed:?}");
        assert_eq!(read(dir.join("cert.pem")), m2.cert);
        assert!(!listing(base).iter().any(|p| p.contains(TMP_SUFFIX)));
    }

    #[test]
    fn combined_layout_and_layout_switch() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        let m = material("api", 1);
        deploy(base, Layout::Split, &m).unwrap();
        let changed = deploy(base, Layout::Combined, &m).unwrap();
        assert_eq!(listing(base), ["api.pem"], "{changed:?}");
        assert_eq!(
            changed.len(),
            6,
            "1 written + 4 files + 1 directory removed: {changed:?}"
        );
        assert_eq!(
            read(base.join("api.pem")),
            format!("{}{}{}", m.key, m.cert, m.chain.concat())
        );
        assert!(deploy(base, Layout::Combined, &m).unwrap().is_empty());
    }

    #[test]
    fn remove_deletes_what_deploy_wrote_and_tolerates_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        let m = material("gone", 1);
        deploy(base, Layout::Split, &m).unwrap();
        // A leftover temporary file from an interrupted write goes too.
        fs::write(base.join("gone/.cert.pem.certplane-tmp"), "x").unwrap();
        // Unrelated files stay.
        fs::write(base.join("other.pem"), "keep").unwrap();
        let changed = remove(base, "gone").unwrap();
        assert_eq!(changed.len(), 6, "{changed:?}");
        assert_eq!(listing(base), ["other.pem"]);
        assert!(remove(base, "gone").unwrap().is_empty());
        assert!(remove(base, "never-deployed").unwrap().is_empty());
    }

    #[test]
    fn remove_keeps_a_directory_with_foreign_files() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        deploy(base, Layout::Split, &material("mixed", 1)).unwrap();
        fs::write(base.join("mixed/notes.txt"), "operator's").unwrap();
        remove(base, "mixed").unwrap();
        assert_eq!(listing(base), ["mixed", "mixed/notes.txt"]);
    }

    #[test]
    fn would_change_and_present_predict_deploy_and_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        let m = material("web", 1);
        for layout in [Layout::Split, Layout::Combined] {
            assert!(would_change(base, layout, &m));
            assert!(!deploy(base, layout, &m).unwrap().is_empty());
            assert!(!would_change(base, layout, &m));
            assert!(deploy(base, layout, &m).unwrap().is_empty());
            assert!(would_change(base, layout, &material("web", 2)));
        }
        // Combined now; split would change (and remove api.pem).
        assert!(would_change(base, Layout::Split, &m));
        assert!(present(base, "web"));
        assert!(!present(base, "other"));
        remove(base, "web").unwrap();
        assert!(!present(base, "web"));
        // An empty leftover directory is something remove deletes.
        fs::create_dir(base.join("web")).unwrap();
        assert!(present(base, "web"));
        assert_eq!(remove(base, "web").unwrap().len(), 1);
    }

    #[test]
    fn the_owed_action_record() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        assert!(!action_pending(base, "web"));
        mark_action_pending(base, "web", "reload").unwrap();
        assert!(action_pending(base, "web"));
        assert!(!action_pending(base, "web-2"));
        assert_eq!(listing(base), [".web.certplane-action-pending"]);
        // Deploy and remove leave it to the caller.
        deploy(base, Layout::Combined, &material("web", 1)).unwrap();
        remove(base, "web").unwrap();
        assert!(action_pending(base, "web"));
        clear_action_pending(base, "web").unwrap();
        clear_action_pending(base, "web").unwrap();
        assert!(listing(base).is_empty());
    }

    #[test]
    fn ids_and_probe() {
        assert!(check_certificate_id("web-prod-01").is_ok());
        for bad in ["", "-x", "Web", "a/b", "..", "a.b", "a_b", &"a".repeat(129)] {
            assert!(check_certificate_id(bad).is_err(), "{bad}");
        }
        let tmp = tempfile::tempdir().unwrap();
        probe_writable(tmp.path(), ".probe").unwrap();
        assert_eq!(listing(tmp.path()), Vec::<String>::new());
        let e = probe_writable(&tmp.path().join("missing"), ".probe").unwrap_err();
        assert!(e.to_string().starts_with("looking up "), "{e}");
        fs::write(tmp.path().join("file"), "").unwrap();
        let e = probe_writable(&tmp.path().join("file"), ".probe").unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn failed_write_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        // The target is a directory: the rename fails.
        fs::create_dir(tmp.path().join("cert.pem")).unwrap();
        fs::write(tmp.path().join("cert.pem/x"), "").unwrap();
        let e = write_atomic(&tmp.path().join("cert.pem"), b"data").unwrap_err();
        assert!(e.action.starts_with("renaming "), "{e}");
        assert!(!tmp.path().join(".cert.pem.certplane-tmp").exists());
    }
}
