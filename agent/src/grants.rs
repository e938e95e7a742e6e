//! Narrowing the host's grant request to what this machine allows.
//!
//! A target's configuration on the host asks for directories and hosts; the
//! agent's own config says what each connector may touch here. A request
//! within the allowance passes unchanged; anything wider is refused as a
//! whole (and reported with the job), never widened or silently trimmed:
//! a connector that silently lost a directory would fail in a confusing way.
//!
//! Directories are judged by where they really are, not by how they are
//! spelled. A connector can create symlinks inside a directory it was
//! granted; a later grant for `<allowed>/link` must not reach whatever the
//! link points to. So every requested directory is opened (symlinks
//! followed), the real path of the *open handle* is read back from the
//! kernel, and that path must lie inside one of the allowed directories,
//! themselves resolved. The handle is kept open and is what the connector
//! gets (see [`OpenedDir`]), so renaming or re-linking the path after the
//! check cannot redirect it; and before every connector call the check is
//! made again ([`CheckedGrants::recheck`]), so a path swapped between the
//! check and the call fails the call instead of being used.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use certplane_runtime::target::{CertificateBundle, DeployResult};
use certplane_runtime::{CallError, ConfigError, InstanceConfig, Plugin, PluginInstance};
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
    /// Named actions (defined in the agent's `[actions]`).
    pub actions: Vec<String>,
    /// The host operator's limits for this target's calls (requests within
    /// this agent's `[limits]`).
    pub limits: certplane_runtime::InstanceLimits,
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
        path.display(), mode(*writable)
    )]
    Directory {
        /// Connector plugin name.
        plugin: String,
        /// The requested path.
        path: PathBuf,
        /// Whether writing was requested.
        writable: bool,
    },
    /// A directory whose real path (symlinks resolved) leaves the allowed
    /// directories, or lies only in ones that do not allow the mode asked.
    #[error(
        "grant refused: directory {} ({}) for connector {plugin} really is {}, which is outside the directories this agent allows it ({})",
        path.display(), mode(*writable), real_path.display(), roots_text(roots)
    )]
    Escapes {
        /// Connector plugin name.
        plugin: String,
        /// The requested path.
        path: PathBuf,
        /// Where it really is.
        real_path: PathBuf,
        /// Whether writing was requested.
        writable: bool,
        /// The allowed directories, resolved, with their modes.
        roots: Vec<(PathBuf, bool)>,
    },
    /// A directory that cannot be opened or whose real path cannot be
    /// established (missing, a dangling symlink, not a directory).
    #[error(
        "grant refused: directory {} for connector {plugin} cannot be used: {reason} (allowed: {})",
        path.display(), roots_text(roots)
    )]
    Unusable {
        /// Connector plugin name.
        plugin: String,
        /// The requested path.
        path: PathBuf,
        /// Why.
        reason: String,
        /// The allowed directories, resolved, with their modes.
        roots: Vec<(PathBuf, bool)>,
    },
    /// The path no longer names the directory that was checked (renamed,
    /// replaced by a symlink) by the time a connector call was made.
    #[error(
        "grant refused: directory {} for connector {plugin} changed after it was checked (checked: {}; now: {now}); not using it",
        path.display(), real_path.display()
    )]
    Changed {
        /// Connector plugin name.
        plugin: String,
        /// The requested path.
        path: PathBuf,
        /// The real path of the directory that was checked.
        real_path: PathBuf,
        /// What the path names now.
        now: String,
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
    /// An action the agent does not allow this connector.
    #[error(
        "grant refused: action {action:?} is not allowed for connector {plugin} by this agent's configuration (connectors.{plugin}.actions)"
    )]
    Action {
        /// Connector plugin name.
        plugin: String,
        /// The requested action.
        action: String,
    },
}

fn mode(writable: bool) -> &'static str {
    if writable { "read-write" } else { "read-only" }
}

fn roots_text(roots: &[(PathBuf, bool)]) -> String {
    if roots.is_empty() {
        return "no directories".into();
    }
    roots
        .iter()
        .map(|(p, w)| format!("{} {}", p.display(), mode(*w)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A granted directory, checked and held open.
///
/// Why a handle and `/proc/self/fd/N`: a path can be re-pointed at any
/// moment (a connector may plant symlinks in what it was granted), so a
/// check of the path proves nothing about a later open of the same path.
/// The directory is opened once (`O_DIRECTORY | O_CLOEXEC`, so a FIFO or a
/// device planted at the path is never opened), the kernel's name for that
/// open directory is read from `/proc/self/fd/N` and checked, and the
/// runtime is given `/proc/self/fd/N` to preopen: opening that magic link
/// re-opens the very same directory object, whatever the original path
/// names by then. The handle lives as long as this value, and
/// [`GrantedInstance`] borrows it, so `N` cannot be closed and reused
/// while an instance could still preopen it.
#[derive(Debug)]
pub struct OpenedDir {
    requested: RequestedDir,
    handle: File,
    real_path: PathBuf,
    id: (u64, u64),
}

impl OpenedDir {
    /// The directory as the host asked for it.
    pub fn requested(&self) -> &RequestedDir {
        &self.requested
    }

    /// Where it really is (symlinks resolved), as checked.
    pub fn real_path(&self) -> &Path {
        &self.real_path
    }

    /// The path the runtime preopens: the held handle, by number.
    fn preopen_path(&self) -> PathBuf {
        fd_path(&self.handle)
    }
}

/// A grant request within the allowance, its directories held open.
#[derive(Debug)]
pub struct CheckedGrants {
    plugin: String,
    allowed: ConnectorGrants,
    hosts: Vec<String>,
    directories: Vec<OpenedDir>,
    actions: Vec<String>,
    limits: certplane_runtime::InstanceLimits,
}

impl CheckedGrants {
    /// The host operator's limits for the target (requests within this
    /// agent's `[limits]`).
    pub fn limits(&self) -> certplane_runtime::InstanceLimits {
        self.limits
    }

    /// The granted host patterns.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The granted directories.
    pub fn directories(&self) -> &[OpenedDir] {
        &self.directories
    }

    /// The granted action names.
    pub fn actions(&self) -> &[String] {
        &self.actions
    }

    /// Checks again that every directory still is where it was checked:
    /// its real path inside the allowed directories (resolved anew) and its
    /// requested path still naming the very directory held open.
    pub fn recheck(&self) -> Result<(), GrantRefused> {
        let roots = resolved_roots(&self.allowed);
        for dir in &self.directories {
            let real_path = handle_real_path(&self.plugin, &dir.requested, &dir.handle, &roots)?;
            contained(&self.plugin, &dir.requested, &real_path, &roots)?;
            let changed = |now: String| GrantRefused::Changed {
                plugin: self.plugin.clone(),
                path: dir.requested.path.clone(),
                real_path: dir.real_path.clone(),
                now,
            };
            let again = open_dir(&dir.requested.path)
                .map_err(|e| changed(format!("cannot be opened: {e}")))?;
            let again_id = file_id(&again).map_err(|e| changed(e.to_string()))?;
            if again_id != dir.id {
                let now = std::fs::read_link(fd_path(&again))
                    .map(|p| format!("a different directory, {}", p.display()))
                    .unwrap_or_else(|_| "a different directory".into());
                return Err(changed(now));
            }
        }
        Ok(())
    }

    /// A plugin instance with these grants: the hosts, and each directory
    /// by its held handle. `config` carries the rest (settings, secrets,
    /// limits); any directories already in it are kept as they are.
    pub fn instance(
        &self,
        plugin: Arc<Plugin>,
        config: InstanceConfig,
    ) -> Result<GrantedInstance<'_>, ConfigError> {
        let mut config = config.with_hosts(&self.hosts)?;
        for dir in &self.directories {
            config = config.with_held_dir(
                dir.preopen_path(),
                dir.real_path.clone(),
                dir.requested.guest_path.clone(),
                dir.requested.writable,
            );
        }
        Ok(GrantedInstance {
            instance: PluginInstance::new(plugin, config)?,
            grants: self,
        })
    }
}

/// Why a connector call through a [`GrantedInstance`] did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum TargetCallError {
    /// The grants no longer hold; the connector was not called.
    #[error(transparent)]
    Refused(#[from] GrantRefused),
    /// The connector call failed.
    #[error(transparent)]
    Call(#[from] CallError),
}

/// A target connector instance bound to checked grants. It borrows them,
/// so the directory handles outlive it, and every call rechecks them first.
#[derive(Debug)]
pub struct GrantedInstance<'g> {
    instance: PluginInstance,
    grants: &'g CheckedGrants,
}

impl GrantedInstance<'_> {
    /// `deploy`, after the grants are checked again.
    pub async fn deploy(
        &self,
        bundle: &CertificateBundle,
        key_pem: &str,
        options: &str,
    ) -> Result<DeployResult, TargetCallError> {
        self.grants.recheck()?;
        Ok(self.instance.deploy(bundle, key_pem, options).await?)
    }

    /// `remove`, after the grants are checked again.
    pub async fn remove(
        &self,
        certificate_id: &str,
        options: &str,
    ) -> Result<Vec<String>, TargetCallError> {
        self.grants.recheck()?;
        Ok(self.instance.remove(certificate_id, options).await?)
    }
}

/// Checks the host's `grants` JSON for `plugin` against `allowed`: every
/// item must be within the allowance, each directory both as written and
/// where it really is. Returns the grants with their directories open.
pub fn check(
    plugin: &str,
    requested: &serde_json::Value,
    allowed: Option<&ConnectorGrants>,
) -> Result<CheckedGrants, GrantRefused> {
    let requested: RequestedGrants = if requested.is_null() {
        RequestedGrants::default()
    } else {
        serde_json::from_value(requested.clone())
            .map_err(|e| GrantRefused::Malformed(e.to_string()))?
    };
    let allowed = allowed.cloned().unwrap_or_default();
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
    if let Some(action) = requested
        .actions
        .iter()
        .find(|a| !allowed.actions.contains(a))
    {
        return Err(GrantRefused::Action {
            plugin: plugin.to_owned(),
            action: action.clone(),
        });
    }
    let roots = resolved_roots(&allowed);
    let mut directories = Vec::with_capacity(requested.directories.len());
    for dir in requested.directories {
        directories.push(open_checked(plugin, dir, &roots)?);
    }
    Ok(CheckedGrants {
        plugin: plugin.to_owned(),
        allowed,
        hosts: requested.hosts,
        directories,
        actions: requested.actions,
        limits: requested.limits,
    })
}

/// Opens `dir` and checks where it really is.
fn open_checked(
    plugin: &str,
    dir: RequestedDir,
    roots: &[(PathBuf, bool)],
) -> Result<OpenedDir, GrantRefused> {
    let unusable = |reason: String| GrantRefused::Unusable {
        plugin: plugin.to_owned(),
        path: dir.path.clone(),
        reason,
        roots: roots.to_vec(),
    };
    let handle = open_dir(&dir.path).map_err(|e| unusable(format!("cannot be opened: {e}")))?;
    let id = file_id(&handle).map_err(|e| unusable(e.to_string()))?;
    let real_path = handle_real_path(plugin, &dir, &handle, roots)?;
    contained(plugin, &dir, &real_path, roots)?;
    tracing::debug!(plugin, path = %dir.path.display(), real_path = %real_path.display(),
        writable = dir.writable, "directory grant checked");
    Ok(OpenedDir {
        requested: dir,
        handle,
        real_path,
        id,
    })
}

/// The real path of an open directory, from the kernel, confirmed by
/// looking it up again: a directory removed meanwhile reads back as
/// `<path> (deleted)`, and one outside this process's view of the tree
/// cannot be found at the name read back; both are refused.
fn handle_real_path(
    plugin: &str,
    dir: &RequestedDir,
    handle: &File,
    roots: &[(PathBuf, bool)],
) -> Result<PathBuf, GrantRefused> {
    let unusable = |reason: String| GrantRefused::Unusable {
        plugin: plugin.to_owned(),
        path: dir.path.clone(),
        reason,
        roots: roots.to_vec(),
    };
    let link = fd_path(handle);
    let real = std::fs::read_link(&link).map_err(|e| {
        unusable(format!(
            "cannot read its real path from {}: {e}",
            link.display()
        ))
    })?;
    let id = file_id(handle).map_err(|e| unusable(e.to_string()))?;
    match std::fs::metadata(&real) {
        Ok(m) if (m.dev(), m.ino()) == id && real.is_absolute() => Ok(real),
        _ => Err(unusable(format!(
            "its real path {} does not lead back to it (removed or moved meanwhile?)",
            real.display()
        ))),
    }
}

/// Whether `real_path` lies inside a resolved root allowing the mode asked.
/// `Path::starts_with` compares whole components, so `/srv/certs2` is not
/// inside `/srv/certs`; both sides are resolved, so no `..` or symlink
/// remains to be interpreted.
fn contained(
    plugin: &str,
    dir: &RequestedDir,
    real_path: &Path,
    roots: &[(PathBuf, bool)],
) -> Result<(), GrantRefused> {
    if roots
        .iter()
        .any(|(root, writable)| real_path.starts_with(root) && (*writable || !dir.writable))
    {
        return Ok(());
    }
    tracing::warn!(plugin, path = %dir.path.display(), real_path = %real_path.display(),
        writable = dir.writable, roots = %roots_text(roots),
        "directory grant leaves the allowed directories");
    Err(GrantRefused::Escapes {
        plugin: plugin.to_owned(),
        path: dir.path.clone(),
        real_path: real_path.to_path_buf(),
        writable: dir.writable,
        roots: roots.to_vec(),
    })
}

/// The allowed directories with symlinks resolved; one that does not
/// resolve (missing) allows nothing.
fn resolved_roots(allowed: &ConnectorGrants) -> Vec<(PathBuf, bool)> {
    allowed
        .directories
        .iter()
        .filter_map(|a| match std::fs::canonicalize(&a.path) {
            Ok(real) => Some((real, a.writable)),
            Err(e) => {
                tracing::warn!(path = %a.path.display(), error = %e,
                    "an allowed directory cannot be resolved; it allows nothing");
                None
            }
        })
        .collect()
}

/// Opens a directory, following symlinks; anything else fails with
/// `ENOTDIR` before it is opened.
fn open_dir(path: &Path) -> std::io::Result<File> {
    // std adds O_CLOEXEC itself.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
}

fn file_id(file: &File) -> std::io::Result<(u64, u64)> {
    let m = file.metadata()?;
    Ok((m.dev(), m.ino()))
}

fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
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
    use std::os::unix::fs::symlink;

    use serde_json::json;

    use super::*;
    use crate::config::AllowedDir;

    /// A temporary tree: `root` (allowed read-write), `ro` (allowed
    /// read-only), `outside` and `root2` (not allowed).
    struct Tree {
        tmp: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            let tree = Tree {
                tmp: tempfile::tempdir().unwrap(),
            };
            for d in ["root/site", "ro", "outside", "root2"] {
                std::fs::create_dir_all(tree.p(d)).unwrap();
            }
            tree
        }

        fn p(&self, rel: &str) -> PathBuf {
            self.tmp.path().join(rel)
        }

        fn real(&self, rel: &str) -> PathBuf {
            std::fs::canonicalize(self.p(rel)).unwrap()
        }

        fn allowance(&self) -> ConnectorGrants {
            ConnectorGrants {
                directories: vec![
                    AllowedDir {
                        path: self.p("root"),
                        writable: true,
                    },
                    AllowedDir {
                        path: self.p("ro"),
                        writable: false,
                    },
                ],
                hosts: vec!["http://127.0.0.1:2019".into()],
                ..ConnectorGrants::default()
            }
        }

        fn check(&self, rel: &str, writable: bool) -> Result<CheckedGrants, GrantRefused> {
            check("p", &dir(&self.p(rel), writable), Some(&self.allowance()))
        }
    }

    fn dir(path: &Path, writable: bool) -> serde_json::Value {
        json!({ "directories": [{ "path": path, "guest_path": "/certs", "writable": writable }] })
    }

    #[test]
    fn requests_within_the_allowance_pass() {
        let t = Tree::new();
        let a = t.allowance();
        for (rel, writable) in [("root", true), ("root/site", true), ("ro", false)] {
            let checked = t.check(rel, writable).unwrap();
            assert_eq!(checked.directories()[0].real_path(), t.real(rel));
        }
        let hosts = json!({ "hosts": ["http://127.0.0.1:2019/"] });
        assert!(check("p", &hosts, Some(&a)).is_ok());
        let none = check("p", &serde_json::Value::Null, None).unwrap();
        assert!(none.hosts().is_empty() && none.directories().is_empty());
    }

    #[test]
    fn wider_requests_are_refused_not_widened() {
        let t = Tree::new();
        let a = t.allowance();
        for (path, writable, why) in [
            (
                t.tmp.path().to_path_buf(),
                true,
                "parent of the allowed dir",
            ),
            (t.p("root2"), true, "sibling with a common prefix"),
            (t.p("root/../outside"), true, "dot-dot escape"),
            (t.p("root/site/.."), true, "dot-dot staying inside"),
            (t.p("ro"), true, "write where only reading is allowed"),
            (PathBuf::from("relative"), false, "relative path"),
        ] {
            let err = check("p", &dir(&path, writable), Some(&a)).unwrap_err();
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
        let err = check("p", &dir(&t.p("root"), true), None).unwrap_err();
        assert!(
            err.to_string().contains("not allowed for connector p"),
            "{err}"
        );
        assert!(matches!(
            check("p", &json!({ "directories": "x" }), Some(&a)),
            Err(GrantRefused::Malformed(_))
        ));
    }

    #[test]
    fn only_allowed_actions_are_granted() {
        let allowed = ConnectorGrants {
            actions: vec!["nginx-test".into(), "nginx-reload".into()],
            ..ConnectorGrants::default()
        };
        let checked = check(
            "nginx",
            &json!({ "actions": ["nginx-test"] }),
            Some(&allowed),
        )
        .unwrap();
        assert_eq!(checked.actions(), ["nginx-test"]);
        for requested in [
            json!({ "actions": ["rm-rf"] }),
            json!({ "actions": ["NGINX-TEST"] }),
        ] {
            let err = check("nginx", &requested, Some(&allowed)).unwrap_err();
            assert!(matches!(err, GrantRefused::Action { .. }), "{err}");
            assert!(
                err.to_string().contains("connectors.nginx.actions"),
                "{err}"
            );
        }
        let err = check("nginx", &json!({ "actions": ["nginx-test"] }), None).unwrap_err();
        assert!(matches!(err, GrantRefused::Action { .. }), "{err}");
        // A command can only be named, never supplied.
        let err = check(
            "nginx",
            &json!({ "actions": [{ "argv": ["/bin/sh"] }] }),
            Some(&allowed),
        )
        .unwrap_err();
        assert!(matches!(err, GrantRefused::Malformed(_)), "{err}");
    }

    #[test]
    fn a_symlink_leaving_the_allowed_directory_is_refused() {
        let t = Tree::new();
        // What a connector can plant in its own directory.
        symlink("../../outside", t.p("root/site/esc")).unwrap();
        symlink("/etc", t.p("root/site/etc")).unwrap();
        let err = t.check("root/site/esc", true).unwrap_err();
        let GrantRefused::Escapes { real_path, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(real_path, &t.real("outside"));
        let text = err.to_string();
        for named in [
            t.p("root/site/esc").display().to_string(),
            t.real("outside").display().to_string(),
            t.real("root").display().to_string(),
            t.real("ro").display().to_string(),
        ] {
            assert!(text.contains(&named), "{named} missing from: {text}");
        }
        let err = t.check("root/site/etc", false).unwrap_err();
        assert!(matches!(err, GrantRefused::Escapes { .. }), "{err}");
    }

    #[test]
    fn a_symlink_staying_inside_is_accepted_at_its_real_path() {
        let t = Tree::new();
        symlink("site", t.p("root/alias")).unwrap();
        symlink("../ro", t.p("root/to-ro")).unwrap();
        let checked = t.check("root/alias", true).unwrap();
        let opened = &checked.directories()[0];
        assert_eq!(opened.real_path(), t.real("root/site"));
        assert_eq!(opened.requested().path, t.p("root/alias"));
        // The runtime is handed the open directory itself.
        let via_fd = std::fs::metadata(opened.preopen_path()).unwrap();
        let site = std::fs::metadata(t.p("root/site")).unwrap();
        assert_eq!((via_fd.dev(), via_fd.ino()), (site.dev(), site.ino()));
        checked.recheck().unwrap();
        // Into another allowed directory: its mode is what counts.
        assert!(t.check("root/to-ro", false).is_ok());
        let err = t.check("root/to-ro", true).unwrap_err();
        assert!(matches!(err, GrantRefused::Escapes { .. }), "{err}");
    }

    #[test]
    fn the_prefix_trick_is_refused_by_components() {
        let t = Tree::new();
        // Lexically inside `root`; really `root2`, which `root` is a string
        // prefix of.
        symlink("../root2", t.p("root/twin")).unwrap();
        let err = t.check("root/twin", true).unwrap_err();
        let GrantRefused::Escapes { real_path, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(real_path, &t.real("root2"));
    }

    #[test]
    fn dangling_symlinks_and_non_directories_are_refused() {
        let t = Tree::new();
        symlink("nowhere", t.p("root/dangling")).unwrap();
        std::fs::write(t.p("root/file"), "x").unwrap();
        for rel in ["root/dangling", "root/file", "root/missing"] {
            let err = t.check(rel, true).unwrap_err();
            assert!(matches!(err, GrantRefused::Unusable { .. }), "{rel}: {err}");
            assert!(err.to_string().contains(&t.p(rel).display().to_string()));
        }
    }

    #[test]
    fn a_symlinked_allowed_directory_counts_where_it_resolves() {
        let t = Tree::new();
        std::fs::create_dir_all(t.p("real-root/site")).unwrap();
        symlink("real-root", t.p("link-root")).unwrap();
        symlink("../../outside", t.p("real-root/site/esc")).unwrap();
        let allowed = ConnectorGrants {
            directories: vec![AllowedDir {
                path: t.p("link-root"),
                writable: true,
            }],
            ..ConnectorGrants::default()
        };
        let ok = check("p", &dir(&t.p("link-root/site"), true), Some(&allowed)).unwrap();
        assert_eq!(ok.directories()[0].real_path(), t.real("real-root/site"));
        let err = check("p", &dir(&t.p("link-root/site/esc"), true), Some(&allowed)).unwrap_err();
        let GrantRefused::Escapes { roots, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(roots, &vec![(t.real("real-root"), true)]);
    }

    #[test]
    fn a_symlink_swapped_in_after_the_check_is_refused_on_recheck() {
        let t = Tree::new();
        let checked = t.check("root/site", true).unwrap();
        checked.recheck().unwrap();
        std::fs::rename(t.p("root/site"), t.p("root/site.old")).unwrap();
        symlink("../outside", t.p("root/site")).unwrap();
        let err = checked.recheck().unwrap_err();
        assert!(matches!(err, GrantRefused::Changed { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&t.real("outside").display().to_string()),
            "{err}"
        );
        // Even so, the handle still is the directory that was checked.
        let via_fd = std::fs::metadata(checked.directories()[0].preopen_path()).unwrap();
        let old = std::fs::metadata(t.p("root/site.old")).unwrap();
        assert_eq!(via_fd.ino(), old.ino());
    }

    #[test]
    fn a_checked_directory_moved_out_of_the_allowance_is_refused_on_recheck() {
        let t = Tree::new();
        let checked = t.check("root/site", true).unwrap();
        std::fs::rename(t.p("root/site"), t.p("outside/site")).unwrap();
        let err = checked.recheck().unwrap_err();
        let GrantRefused::Escapes { real_path, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(real_path, &t.real("outside/site"));
        // Removed altogether.
        let checked = t.check("root", true).unwrap();
        std::fs::create_dir(t.p("root/gone")).unwrap();
        let gone = t.check("root/gone", true).unwrap();
        std::fs::remove_dir(t.p("root/gone")).unwrap();
        assert!(matches!(gone.recheck(), Err(GrantRefused::Unusable { .. })));
        checked.recheck().unwrap();
    }
}
