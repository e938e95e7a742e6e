//! On-disk cache of compiled components.
//!
//! Compiling a component with Cranelift takes tens of milliseconds to
//! seconds; loading a precompiled artifact takes about a hundred
//! microseconds. Artifacts are keyed by the component's SHA-256 (already
//! verified against the manifest) and by the engine's compatibility hash, so
//! a different wasmtime version or engine configuration never loads a stale
//! artifact.
//!
//! Trust: an artifact is native code. The cache directory must be writable
//! only by the user running certplane, exactly like the binary itself.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a component came from on this load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded a precompiled artifact.
    Hit,
    /// Compiled and stored a new artifact.
    Compiled,
    /// Compiled; caching is disabled or storing failed (logged).
    Uncached,
}

/// The compiled-component cache.
#[derive(Debug, Clone)]
pub(crate) struct ComponentCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

impl ComponentCache {
    pub(crate) fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        // `DefaultHasher::new()` uses fixed keys, so this is stable for a
        // given build; a new build may change it, which only costs a
        // recompile.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        ComponentCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    fn artifact_path(&self, dir: &Path, sha256: &str) -> PathBuf {
        dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// Loads the component with digest `sha256` from the cache, or compiles
    /// `bytes` and stores the result.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        sha256: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(dir) = &self.dir else {
            return Ok((Component::new(engine, bytes)?, CacheOutcome::Uncached));
        };
        let path = self.artifact_path(dir, sha256);
        // Read the artifact into memory rather than mmapping the file: a
        // mapped file truncated behind our back (an operator clearing the
        // cache) would crash the process with SIGBUS.
        if let Ok(artifact) = std::fs::read(&path) {
            // SAFETY: the artifact was written by `store` below into a
            // directory only certplane's user may write (see module docs),
            // under a name bound to the verified component digest and this
            // engine's configuration. wasmtime additionally checks the
            // artifact's header for engine compatibility.
            match unsafe { Component::deserialize(engine, &artifact) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable compiled artifact");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let started = std::time::Instant::now();
        let component = Component::new(engine, bytes)?;
        tracing::info!(
            sha256,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compiled plugin component"
        );
        match self.store(dir, &path, &component) {
            Ok(()) => Ok((component, CacheOutcome::Compiled)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot cache compiled plugin; continuing uncached");
                Ok((component, CacheOutcome::Uncached))
            }
        }
    }

    fn store(&self, dir: &Path, path: &Path, component: &Component) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let bytes = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // Write-then-rename so a concurrent loader never sees half a file.
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut tmp, &bytes)?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}
