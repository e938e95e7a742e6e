//! The file work of the `traefik` target, on plain `std::fs` so it runs the
//! same inside the component (through the granted preopens) and natively in
//! unit tests (in temporary directories).
//!
//! One deployment: write the certificate and key under new names, switch
//! the dynamic configuration file to them with one rename, then delete what
//! the switch made unused. Until the rename nothing Traefik reads has
//! changed, so any failure before it is undone by deleting the new files.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use certplane_sdk::files::io_err;
pub use certplane_sdk::files::{FileError, probe_writable, write_atomic};
use certplane_sdk::log;

use crate::dynamic::{self, Entry, Managed, Problem};
use crate::names;

/// A lock older than this was left by a call that died (a trap or a
/// deadline ends a call without cleanup); the next call takes it over.
/// Calls of this connector hold the lock for milliseconds.
pub const STALE_LOCK: Duration = Duration::from_secs(120);

/// Where things go.
#[derive(Clone, Debug)]
pub struct Place {
    /// The directory of the certificate files, as this component sees it.
    pub cert_dir: PathBuf,
    /// The same directory as Traefik opens it (written into the entries),
    /// without a trailing `/`.
    pub served_cert_dir: String,
    /// The directory Traefik's file provider watches, as this component
    /// sees it.
    pub config_dir: PathBuf,
    /// The dynamic configuration file's name in `config_dir`.
    pub config_file: String,
}

impl Place {
    /// The configuration file, as this component sees it.
    pub fn config_path(&self) -> PathBuf {
        self.config_dir.join(&self.config_file)
    }

    fn lock_path(&self) -> PathBuf {
        self.config_dir
            .join(format!(".{}.certplane-lock", self.config_file))
    }

    fn entry(&self, stem: &str) -> Entry {
        Entry {
            cert_file: format!("{}/{stem}.crt", self.served_cert_dir),
            key_file: format!("{}/{stem}.key", self.served_cert_dir),
        }
    }
}

/// What to write for one certificate.
#[derive(Clone, Debug)]
pub struct Material {
    /// The managed certificate's id (`[a-z0-9-]`), used in file names.
    pub certificate_id: String,
    /// The certificate file: the leaf, then the chain, PEM.
    pub cert: String,
    /// The key file, PEM.
    pub key: String,
}

impl Material {
    /// The files' shared name without extension.
    pub fn stem(&self) -> String {
        names::stem(&self.certificate_id, &self.cert, &self.key)
    }
}

/// Why a call could not do its work.
#[derive(Debug)]
pub enum Error {
    /// A file operation failed; nothing Traefik reads changed.
    Io(FileError),
    /// The configuration file exists but is not certplane's.
    Foreign(PathBuf),
    /// The configuration file is certplane's but does not hold what this
    /// connector writes.
    Unparseable(PathBuf, String),
    /// Another call holds the lock on the configuration file.
    Busy(PathBuf),
    /// The configuration was switched, but files it no longer names could
    /// not be deleted.
    Cleanup(FileError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Foreign(path) => write!(
                f,
                "{} exists and is not certplane's (its first line is not `{}`); refusing to \
                 overwrite it: choose another `config_file` or move that file away",
                path.display(),
                dynamic::MARKER
            ),
            Error::Unparseable(path, why) => write!(
                f,
                "{} is certplane's but holds something it did not write ({why}); refusing to \
                 rewrite it: move your changes to another file of the directory and restore or \
                 delete this one",
                path.display()
            ),
            Error::Busy(path) => write!(
                f,
                "another call is updating the configuration ({} exists and is younger than {} s)",
                path.display(),
                STALE_LOCK.as_secs()
            ),
            Error::Cleanup(e) => write!(
                f,
                "the configuration now names the new files, but files it no longer names could \
                 not be deleted: {e}"
            ),
        }
    }
}

impl From<FileError> for Error {
    fn from(e: FileError) -> Self {
        Error::Io(e)
    }
}

/// Writes `material` and points the configuration at it. Returns a line
/// per file written or deleted (empty when the bundle was already
/// deployed).
pub fn deploy(place: &Place, material: &Material) -> Result<Vec<String>, Error> {
    let id = &material.certificate_id;
    let stem = material.stem();
    // Nothing to do needs no lock, so a repeated deploy touches nothing.
    if let Some(current) = read_config(place)?
        && up_to_date(place, &current, material, &stem)
        && leftovers(place, id, Some(&stem))?.is_empty()
    {
        return Ok(Vec::new());
    }

    let _lock = Lock::acquire(place)?;
    let current = read_config(place)?;
    let mut changed = Vec::new();
    let mut created = Vec::new();
    let switched = (|| -> Result<(), Error> {
        let cert = place.cert_dir.join(format!("{stem}.crt"));
        let key = place.cert_dir.join(format!("{stem}.key"));
        write_new(&key, material.key.as_bytes(), &mut changed, &mut created)?;
        write_new(&cert, material.cert.as_bytes(), &mut changed, &mut created)?;
        let mut entries: Vec<Managed> = current
            .as_ref()
            .map(|c| c.entries.clone())
            .unwrap_or_default();
        if let Some(old) = entries.iter().find(|m| &m.certificate_id == id)
            && old.dir != place.served_cert_dir
        {
            log::warn!(
                "{id}: the previous files {} and {} are outside `directory`; delete them yourself",
                old.entry.cert_file,
                old.entry.key_file
            );
        }
        entries.retain(|m| &m.certificate_id != id);
        entries.push(Managed {
            certificate_id: id.clone(),
            stem: stem.clone(),
            dir: place.served_cert_dir.clone(),
            entry: place.entry(&stem),
        });
        write_config(place, current.as_ref(), &entries, &mut changed)
    })();
    if let Err(e) = switched {
        roll_back(&created);
        return Err(e);
    }
    changed.extend(sweep(place, id, Some(&stem)).map_err(Error::Cleanup)?);
    Ok(changed)
}

/// Drops `certificate_id` from the configuration, then deletes its files.
/// Nothing to remove is not an error.
pub fn remove(place: &Place, certificate_id: &str) -> Result<Vec<String>, Error> {
    if read_config(place)?
        .is_none_or(|c| c.entries.iter().all(|m| m.certificate_id != certificate_id))
        && leftovers(place, certificate_id, None)?.is_empty()
    {
        return Ok(Vec::new());
    }
    let _lock = Lock::acquire(place)?;
    let mut changed = Vec::new();
    if let Some(current) = read_config(place)?
        && current
            .entries
            .iter()
            .any(|m| m.certificate_id == certificate_id)
    {
        let rest: Vec<Managed> = current
            .entries
            .iter()
            .filter(|m| m.certificate_id != certificate_id)
            .cloned()
            .collect();
        write_config(place, Some(&current), &rest, &mut changed)?;
    }
    changed.extend(sweep(place, certificate_id, None)?);
    Ok(changed)
}

/// Checks what `validate-config` can without changing anything Traefik
/// reads: both directories exist and take new files, and the
/// configuration file, if there is one, is certplane's and readable.
/// Returns the certificate ids the file holds.
pub fn check(place: &Place, probe_name: &str) -> Result<Vec<String>, Error> {
    probe_writable(&place.cert_dir, probe_name)?;
    if place.config_dir != place.cert_dir {
        probe_writable(&place.config_dir, probe_name)?;
    }
    Ok(read_config(place)?
        .map(|c| c.entries.into_iter().map(|m| m.certificate_id).collect())
        .unwrap_or_default())
}

/// The configuration file as read.
#[derive(Debug)]
struct Current {
    text: String,
    entries: Vec<Managed>,
}

/// The configuration file's entries; `None` when there is no file yet.
fn read_config(place: &Place) -> Result<Option<Current>, Error> {
    let path = place.config_path();
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Io(FileError {
                action: format!("reading {}", path.display()),
                error: e,
            }));
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) if e.as_bytes().starts_with(dynamic::MARKER.as_bytes()) => {
            return Err(Error::Unparseable(path, "not UTF-8".into()));
        }
        Err(_) => return Err(Error::Foreign(path)),
    };
    match dynamic::parse(&text) {
        Ok(entries) => Ok(Some(Current { text, entries })),
        Err(Problem::Foreign) => Err(Error::Foreign(path)),
        Err(Problem::Unparseable(why)) => Err(Error::Unparseable(path, why)),
    }
}

/// Whether `current` already names `stem`'s files in the served directory
/// and they hold exactly `material`.
fn up_to_date(place: &Place, current: &Current, material: &Material, stem: &str) -> bool {
    let entry_ok = current
        .entries
        .iter()
        .any(|m| m.certificate_id == material.certificate_id && m.entry == place.entry(stem));
    let same = |name: String, want: &str| {
        fs::read(place.cert_dir.join(name)).is_ok_and(|have| have == want.as_bytes())
    };
    entry_ok
        && same(format!("{stem}.crt"), &material.cert)
        && same(format!("{stem}.key"), &material.key)
        && dynamic::render(&current.entries).is_ok_and(|t| t == current.text)
}

/// Rewrites the configuration file for `entries` unless it already holds
/// exactly that.
fn write_config(
    place: &Place,
    current: Option<&Current>,
    entries: &[Managed],
    changed: &mut Vec<String>,
) -> Result<(), Error> {
    let path = place.config_path();
    let text = dynamic::render(entries).map_err(|why| {
        Error::Io(FileError {
            action: format!("writing {}", path.display()),
            error: io::Error::other(why),
        })
    })?;
    if current.is_some_and(|c| c.text == text) {
        return Ok(());
    }
    write_atomic(&path, text.as_bytes())?;
    changed.push(format!("wrote {}", path.display()));
    Ok(())
}

/// Writes `path` unless it already holds `contents`; remembers it in
/// `created` when it did not exist, so a failure later can delete it.
fn write_new(
    path: &Path,
    contents: &[u8],
    changed: &mut Vec<String>,
    created: &mut Vec<PathBuf>,
) -> Result<(), Error> {
    let existed = match fs::read(path) {
        Ok(have) if have == contents => return Ok(()),
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(Error::Io(FileError {
                action: format!("reading {}", path.display()),
                error: e,
            }));
        }
    };
    write_atomic(path, contents)?;
    if !existed {
        created.push(path.to_path_buf());
    }
    changed.push(format!("wrote {}", path.display()));
    Ok(())
}

fn roll_back(created: &[PathBuf]) {
    for path in created {
        if let Err(e) = fs::remove_file(path) {
            log::warn!(
                "rolling back: could not delete {}: {e}; it is named by no configuration",
                path.display()
            );
        }
    }
}

/// The files in the certificate directory that belong to `certificate_id`
/// but not to `keep` (a stem): replaced certificates and temporary files
/// left by calls that died.
fn leftovers(
    place: &Place,
    certificate_id: &str,
    keep: Option<&str>,
) -> Result<Vec<PathBuf>, FileError> {
    let dir = &place.cert_dir;
    let listing = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(FileError {
                action: format!("listing {}", dir.display()),
                error: e,
            });
        }
    };
    let mut out = Vec::new();
    for item in listing {
        let item = item.map_err(io_err(format!("listing {}", dir.display())))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let (real, is_tmp) = match names::untmp_name(name) {
            Some(real) => (real, true),
            None => (name, false),
        };
        let Some(parsed) = names::parse_file_name(real) else {
            continue;
        };
        if parsed.certificate_id == certificate_id && (is_tmp || Some(parsed.stem.as_str()) != keep)
        {
            out.push(dir.join(name));
        }
    }
    out.sort();
    Ok(out)
}

/// Deletes [`leftovers`]; a line per file deleted.
fn sweep(
    place: &Place,
    certificate_id: &str,
    keep: Option<&str>,
) -> Result<Vec<String>, FileError> {
    let mut changed = Vec::new();
    for path in leftovers(place, certificate_id, keep)? {
        match fs::remove_file(&path) {
            Ok(()) => changed.push(format!("removed {}", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(FileError {
                    action: format!("removing {}", path.display()),
                    error: e,
                });
            }
        }
    }
    Ok(changed)
}

/// Exclusive use of one configuration file among calls that may run at
/// once (the host runs several calls of an instance concurrently): without
/// it two deployments could each rewrite the file from the same old
/// content and one entry would be lost. WASI has no advisory locks; a file
/// created with `create_new` is atomic on every file system the agent uses.
struct Lock {
    path: PathBuf,
}

impl Lock {
    fn acquire(place: &Place) -> Result<Lock, Error> {
        let path = place.lock_path();
        // Three tries: the lock may vanish or go stale between the steps.
        for _ in 0..3 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    // Only for a person who finds it; the lock is the file.
                    let _ = f.write_all(
                        b"certplane traefik target: a call is updating the configuration\n",
                    );
                    return Ok(Lock { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let age = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
                    match age {
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Ok(age) if age > STALE_LOCK => {
                            log::warn!(
                                "taking over {} ({} s old, left by a call that died)",
                                path.display(),
                                age.as_secs()
                            );
                            match fs::remove_file(&path) {
                                Ok(()) => continue,
                                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                                Err(e) => {
                                    return Err(Error::Io(FileError {
                                        action: format!(
                                            "removing the stale lock {}",
                                            path.display()
                                        ),
                                        error: e,
                                    }));
                                }
                            }
                        }
                        _ => return Err(Error::Busy(path)),
                    }
                }
                Err(e) => {
                    return Err(Error::Io(FileError {
                        action: format!("creating the lock {}", path.display()),
                        error: e,
                    }));
                }
            }
        }
        Err(Error::Busy(path))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            log::warn!(
                "could not release the lock {}: {e}; the next call takes it over after {} s",
                self.path.display(),
                STALE_LOCK.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAF: &str = "-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n";
    const INT: &str = "-----BEGIN CERTIFICATE-----\nINT\n-----END CERTIFICATE-----\n";

    fn material(id: &str, n: u8) -> Material {
        Material {
            certificate_id: id.into(),
            cert: format!("{LEAF}{n}{INT}"),
            key: format!("-----BEGIN PRIVATE KEY-----\nKEY{n}\n-----END PRIVATE KEY-----\n"),
        }
    }

    struct Dirs {
        _tmp: tempfile::TempDir,
        certs: PathBuf,
        conf: PathBuf,
    }

    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let certs = tmp.path().join("certs");
        let conf = tmp.path().join("dynamic");
        fs::create_dir(&certs).unwrap();
        fs::create_dir(&conf).unwrap();
        Dirs {
            _tmp: tmp,
            certs,
            conf,
        }
    }

    fn place(d: &Dirs) -> Place {
        Place {
            cert_dir: d.certs.clone(),
            served_cert_dir: d.certs.display().to_string(),
            config_dir: d.conf.clone(),
            config_file: "certplane.yml".into(),
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    fn entries(p: &Place) -> Vec<Managed> {
        dynamic::parse(&fs::read_to_string(p.config_path()).unwrap()).unwrap()
    }

    #[test]
    fn deploy_writes_files_and_points_the_configuration_at_them() {
        let d = dirs();
        let p = place(&d);
        let m = material("web", 1);
        let stem = m.stem();
        let changed = deploy(&p, &m).unwrap();
        assert_eq!(changed.len(), 3, "{changed:?}");
        assert_eq!(
            listing(&d.certs),
            [format!("{stem}.crt"), format!("{stem}.key")]
        );
        assert_eq!(listing(&d.conf), ["certplane.yml"], "lock released");
        assert_eq!(
            fs::read_to_string(d.certs.join(format!("{stem}.crt"))).unwrap(),
            m.cert
        );
        assert_eq!(
            fs::read_to_string(d.certs.join(format!("{stem}.key"))).unwrap(),
            m.key
        );
        let e = entries(&p);
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].entry.cert_file,
            format!("{}/{stem}.crt", d.certs.display())
        );

        // Again: nothing changes, no lock is taken.
        fs::write(p.lock_path(), "held").unwrap();
        assert!(deploy(&p, &m).unwrap().is_empty());
        fs::remove_file(p.lock_path()).unwrap();

        // A renewal: new names, the old files go, one entry.
        let m2 = material("web", 2);
        let changed = deploy(&p, &m2).unwrap();
        assert_eq!(changed.len(), 5, "{changed:?}");
        let stem2 = m2.stem();
        assert_ne!(stem, stem2);
        assert_eq!(
            listing(&d.certs),
            [format!("{stem2}.crt"), format!("{stem2}.key")]
        );
        let e = entries(&p);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].stem, stem2);

        // A second certificate id: a second entry, the first untouched.
        let other = material("web-2", 1);
        deploy(&p, &other).unwrap();
        let ids: Vec<String> = entries(&p).into_iter().map(|m| m.certificate_id).collect();
        assert_eq!(ids, ["web", "web-2"]);
        assert_eq!(listing(&d.certs).len(), 4);

        // Remove one: its entry and files go; again is a no-op.
        let changed = remove(&p, "web").unwrap();
        assert_eq!(changed.len(), 3, "{changed:?}");
        let ids: Vec<String> = entries(&p).into_iter().map(|m| m.certificate_id).collect();
        assert_eq!(ids, ["web-2"]);
        assert_eq!(listing(&d.certs).len(), 2);
        assert!(remove(&p, "web").unwrap().is_empty());
        assert!(remove(&p, "never-deployed").unwrap().is_empty());
    }

    #[test]
    fn one_directory_for_both_and_other_files_untouched() {
        let d = dirs();
        let mut p = place(&d);
        p.cert_dir = d.conf.clone();
        p.served_cert_dir = d.conf.display().to_string();
        fs::write(d.conf.join("routers.yml"), "http: {}\n").unwrap();
        let m = material("web", 1);
        deploy(&p, &m).unwrap();
        let stem = m.stem();
        assert_eq!(
            listing(&d.conf),
            [
                "certplane.yml".to_string(),
                "routers.yml".into(),
                format!("{stem}.crt"),
                format!("{stem}.key")
            ]
        );
        assert_eq!(
            fs::read_to_string(d.conf.join("routers.yml")).unwrap(),
            "http: {}\n"
        );
        remove(&p, "web").unwrap();
        assert_eq!(listing(&d.conf), ["certplane.yml", "routers.yml"]);
        assert!(entries(&p).is_empty());
    }

    #[test]
    fn leftovers_of_dead_calls_are_swept_and_other_ids_kept() {
        let d = dirs();
        let p = place(&d);
        let m = material("web", 1);
        deploy(&p, &m).unwrap();
        // A call that died after writing new files, before the switch,
        // and a temporary file; plus files of an id that has `web` as a
        // prefix, which are not web's.
        let dead = names::stem("web", "x", "y");
        let other = names::stem("web-1", "x", "y");
        for name in [
            format!("{dead}.crt"),
            format!("{dead}.key"),
            names::tmp_name(&format!("{}.key", m.stem())),
            format!("{other}.crt"),
        ] {
            fs::write(d.certs.join(name), "x").unwrap();
        }
        let changed = deploy(&p, &m).unwrap();
        assert_eq!(changed.len(), 3, "{changed:?}");
        assert!(changed.iter().all(|c| c.starts_with("removed ")));
        let mut want = [
            format!("{}.crt", m.stem()),
            format!("{}.key", m.stem()),
            format!("{other}.crt"),
        ];
        want.sort();
        assert_eq!(listing(&d.certs), want);
        assert!(deploy(&p, &m).unwrap().is_empty());
    }

    #[test]
    fn a_failed_switch_leaves_the_old_configuration_and_no_new_files() {
        let d = dirs();
        let p = place(&d);
        deploy(&p, &material("web", 1)).unwrap();
        let before_conf = fs::read(p.config_path()).unwrap();
        let before_certs = listing(&d.certs);
        // The configuration's temporary file cannot be created.
        let obstacle = d.conf.join(names::tmp_name("certplane.yml"));
        fs::create_dir(&obstacle).unwrap();
        fs::write(obstacle.join("x"), "").unwrap();
        let e = deploy(&p, &material("web", 2)).unwrap_err();
        assert!(
            matches!(&e, Error::Io(f) if f.action.starts_with("creating ")),
            "{e}"
        );
        assert_eq!(fs::read(p.config_path()).unwrap(), before_conf);
        assert_eq!(listing(&d.certs), before_certs);
        assert!(!p.lock_path().exists());
        fs::remove_dir_all(&obstacle).unwrap();
        deploy(&p, &material("web", 2)).unwrap();
    }

    #[test]
    fn foreign_and_broken_configurations_are_not_touched() {
        let d = dirs();
        let p = place(&d);
        fs::write(p.config_path(), "tls:\n  certificates: []\n").unwrap();
        let e = deploy(&p, &material("web", 1)).unwrap_err();
        assert!(matches!(e, Error::Foreign(_)), "{e}");
        assert!(
            e.to_string().contains("choose another `config_file`"),
            "{e}"
        );
        assert!(matches!(remove(&p, "web").unwrap_err(), Error::Foreign(_)));
        assert!(matches!(
            check(&p, ".probe").unwrap_err(),
            Error::Foreign(_)
        ));
        assert_eq!(
            fs::read_to_string(p.config_path()).unwrap(),
            "tls:\n  certificates: []\n"
        );
        assert!(listing(&d.certs).is_empty());

        let broken = format!("{}tls: [\n", dynamic::HEADER);
        fs::write(p.config_path(), &broken).unwrap();
        let e = deploy(&p, &material("web", 1)).unwrap_err();
        assert!(matches!(e, Error::Unparseable(..)), "{e}");
        assert_eq!(fs::read_to_string(p.config_path()).unwrap(), broken);
        assert!(listing(&d.certs).is_empty());

        fs::write(p.config_path(), [0xff, 0xfe]).unwrap();
        assert!(matches!(
            deploy(&p, &material("web", 1)).unwrap_err(),
            Error::Foreign(_)
        ));
    }

    #[test]
    fn a_held_lock_makes_the_call_busy_and_a_stale_one_is_taken_over() {
        let d = dirs();
        let p = place(&d);
        fs::write(p.lock_path(), "held").unwrap();
        let e = deploy(&p, &material("web", 1)).unwrap_err();
        assert!(matches!(e, Error::Busy(_)), "{e}");
        assert!(!p.config_path().exists());
        assert!(listing(&d.certs).is_empty());

        let old = SystemTime::now() - STALE_LOCK - Duration::from_secs(5);
        fs::File::options()
            .write(true)
            .open(p.lock_path())
            .unwrap()
            .set_modified(old)
            .unwrap();
        deploy(&p, &material("web", 1)).unwrap();
        assert!(!p.lock_path().exists());
        assert_eq!(entries(&p).len(), 1);
    }

    #[test]
    fn check_probes_both_directories() {
        let d = dirs();
        let p = place(&d);
        assert!(check(&p, ".probe").unwrap().is_empty());
        deploy(&p, &material("web", 1)).unwrap();
        assert_eq!(check(&p, ".probe").unwrap(), ["web"]);
        let mut missing = p.clone();
        missing.cert_dir = d.certs.join("nope");
        let e = check(&missing, ".probe").unwrap_err();
        assert!(
            matches!(&e, Error::Io(f) if f.error.kind() == io::ErrorKind::NotFound),
            "{e}"
        );
    }
}
