//! Where `scripts/build-plugins` put the packaged connectors, and plugin
//! directories for tests.

use std::path::PathBuf;

use crate::repo_root;

/// Directory of the packaged connectors (`target/plugins`); panics with the
/// fix when they were not built.
pub fn plugin_dir() -> PathBuf {
    let dir = repo_root().join("target/plugins");
    assert!(
        dir.join("local-ca.toml").exists() && dir.join("pem-files.toml").exists(),
        "{} has no plugins: run scripts/build-plugins first",
        dir.display()
    );
    dir
}

/// The compiled-plugin cache every test process shares
/// (`target/test-plugin-cache`): artifacts are written atomically, so
/// concurrent tests share it safely.
pub fn plugin_cache_dir() -> PathBuf {
    repo_root().join("target/test-plugin-cache")
}

/// A plugin directory with the packaged connectors plus the named test
/// connectors from `target/test-plugins`.
pub fn plugin_dir_with_fixtures(fixtures: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let test_plugins = repo_root().join("target/test-plugins");
    let mut files: Vec<PathBuf> = std::fs::read_dir(plugin_dir())
        .expect("plugin dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    for name in fixtures {
        for ext in ["toml", "wasm"] {
            let f = test_plugins.join(format!("{name}.{ext}"));
            assert!(
                f.exists(),
                "{} is missing: run scripts/build-plugins first",
                f.display()
            );
            files.push(f);
        }
    }
    for f in files {
        if let Some(file_name) = f.file_name() {
            std::fs::copy(&f, dir.path().join(file_name)).expect("copy plugin");
        }
    }
    dir
}
