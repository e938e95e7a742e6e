//! `deploy` and `remove` as transactions over the certificate files and
//! nginx: change the files, let nginx test its configuration, reload it,
//! and put the files back whenever nginx did not take them.
//!
//! The actions are behind [`Actions`] so the whole flow runs natively in
//! unit tests with a scripted stand-in for nginx.

use std::path::{Path, PathBuf};

use certplane_sdk::ConnectorError;
use certplane_sdk::actions::{ActionOutput, failure_message};

use crate::files::{self, FileError, Journal, JournalFile, Planned};

/// The granted actions of the instance.
pub trait Actions {
    /// Whether `name` is granted.
    fn granted(&self, name: &str) -> bool;
    /// Runs `name` (any exit status is an answer).
    fn run(&self, name: &str) -> Result<ActionOutput, ConnectorError>;
}

/// The actions of the running component (the contract's `actions` import).
pub struct HostActions;

impl Actions for HostActions {
    fn granted(&self, name: &str) -> bool {
        certplane_sdk::actions::granted(name)
    }

    fn run(&self, name: &str) -> Result<ActionOutput, ConnectorError> {
        certplane_sdk::actions::run(name)
    }
}

/// Which actions test nginx's configuration and reload it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionNames {
    /// Configuration test (`nginx -t`).
    pub test: String,
    /// Reload (`nginx -s reload`).
    pub reload: String,
}

impl ActionNames {
    /// Both must be granted: a missing one is a configuration problem, found
    /// before any file is touched.
    pub fn check_granted(&self, actions: &impl Actions) -> Result<(), ConnectorError> {
        for (what, name) in [("test", &self.test), ("reload", &self.reload)] {
            if !actions.granted(name) {
                return Err(ConnectorError::invalid_config(format!(
                    "the {what} action {name:?} is not granted to this instance: define it in \
                     the agent's configuration ([actions.{name}]) and list it in the instance's \
                     grants (actions = [...])"
                )));
            }
        }
        Ok(())
    }
}

/// Maps a file error: a directory that is missing, not granted or not
/// writable is a configuration problem; anything else (disk full, I/O
/// error) may pass.
pub fn file_error(e: FileError, dir: &Path) -> ConnectorError {
    use std::io::ErrorKind;
    let msg = e.to_string();
    match e.error.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem | ErrorKind::NotFound => {
            ConnectorError::invalid_config(format!(
                "{msg} (the agent must grant `{}` to this instance read-write and the \
                 directory must exist)",
                dir.display()
            ))
        }
        ErrorKind::InvalidData => ConnectorError::invalid_config(msg),
        _ => ConnectorError::transient(msg),
    }
}

/// Checks that `base` is a directory this instance can see. Without a
/// grant the guest's file system has no such path at all, whatever error
/// the lookup reports: that is the operator's to fix, never a retry's.
pub fn check_directory(base: &Path) -> Result<(), ConnectorError> {
    let grant = || {
        format!(
            "the agent must grant `{}` to this instance read-write and the directory must exist",
            base.display()
        )
    };
    match std::fs::metadata(base) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(ConnectorError::invalid_config(format!(
            "{} is not a directory ({})",
            base.display(),
            grant()
        ))),
        Err(e) => Err(ConnectorError::invalid_config(format!(
            "looking up {}: {e} ({})",
            base.display(),
            grant()
        ))),
    }
}

/// Settles the transaction an earlier call left unfinished (stopped at its
/// deadline): a pending one is rolled back and `Some` of what that changed
/// is returned (nginx may or may not have loaded the files it had written,
/// so the caller must test and reload); a committed one (nginx had loaded
/// the new files) only loses its backups.
fn recover(base: &Path, id: &str) -> Result<Option<Vec<String>>, ConnectorError> {
    let Some(journal) = Journal::read(base, id).map_err(|e| file_error(e, base))? else {
        return Ok(None);
    };
    if journal.committed {
        journal.finish(base, id).map_err(|e| file_error(e, base))?;
        return Ok(None);
    }
    let mut changed = journal
        .roll_back(base, id)
        .map_err(|e| file_error(e, base))?;
    certplane_sdk::log::warn!(
        "{id}: an earlier call was interrupted before nginx confirmed its files; restored the \
         files nginx last accepted"
    );
    changed.insert(0, "rolled back an interrupted change".to_string());
    Ok(Some(changed))
}

/// Undoes `journal` after a failed step and returns `error`, or, when the
/// files cannot be put back, a transient error saying both (the journal
/// stays, so the next call tries again).
fn undo(base: &Path, id: &str, journal: &Journal, error: ConnectorError) -> ConnectorError {
    match journal.roll_back(base, id) {
        Ok(_) => error,
        Err(e) => ConnectorError::transient(format!(
            "{}; restoring the previous files failed too ({e}); the next call restores them",
            error.message()
        )),
    }
}

/// Marks `journal` committed (nginx loaded the change) and finishes it.
fn commit(base: &Path, id: &str, journal: &mut Journal) -> Result<(), ConnectorError> {
    journal.committed = true;
    journal.write(base, id).map_err(|e| file_error(e, base))?;
    journal.finish(base, id).map_err(|e| file_error(e, base))
}

/// Runs `name`; a non-zero exit becomes `failed(message)`.
fn run_step(
    actions: &impl Actions,
    name: &str,
    failed: impl FnOnce(String) -> ConnectorError,
) -> Result<(), ConnectorError> {
    let output = actions.run(name)?;
    if output.exit_code == Some(0) {
        Ok(())
    } else {
        Err(failed(failure_message(name, &output)))
    }
}

/// Tests nginx's configuration and reloads it; `refused` words a failed
/// test. On any failure `journal` is undone.
fn test_and_reload(
    base: &Path,
    id: &str,
    journal: &Journal,
    names: &ActionNames,
    actions: &impl Actions,
    refused: &str,
) -> Result<(), ConnectorError> {
    if let Err(e) = run_step(actions, &names.test, |m| {
        ConnectorError::rejected(format!("{refused}: {m}"))
    }) {
        return Err(undo(base, id, journal, e));
    }
    if let Err(e) = run_step(actions, &names.reload, |m| {
        ConnectorError::transient(format!(
            "reloading nginx failed, the previous files are back: {m}"
        ))
    }) {
        return Err(undo(base, id, journal, e));
    }
    Ok(())
}

/// Installs `planned` under `base` for certificate `id`: nothing happens
/// when the files already hold exactly these bytes (and no interrupted
/// change is pending). Otherwise the files are replaced atomically, the
/// test action runs (non-zero exit: the previous files come back, the very
/// same files, or are deleted when there were none, and the call is
/// `rejected` with nginx's message), then the reload action (failure: the
/// previous files come back and the call is `transient`, so a retry does
/// it all again). Returns a line per file written and one for the reload.
pub fn deploy(
    base: &Path,
    id: &str,
    planned: &[Planned],
    names: &ActionNames,
    actions: &impl Actions,
) -> Result<Vec<String>, ConnectorError> {
    names.check_granted(actions)?;
    check_directory(base)?;
    let recovered = recover(base, id)?;
    let mut current = Vec::with_capacity(planned.len());
    for p in planned {
        let bytes = files::read_optional(&base.join(&p.rel)).map_err(|e| file_error(e, base))?;
        current.push(bytes);
    }
    let same = planned
        .iter()
        .zip(&current)
        .all(|(p, c)| c.as_deref() == Some(p.contents.as_slice()));
    if same && recovered.is_none() {
        return Ok(Vec::new());
    }
    let mut changed = recovered.unwrap_or_default();

    let mut journal = Journal {
        committed: false,
        files: planned
            .iter()
            .zip(&current)
            .map(|(p, c)| JournalFile {
                rel: p.rel.clone(),
                existed: c.is_some(),
            })
            .collect(),
        created_dirs: Vec::new(),
    };
    // Recorded before the first change, so an interruption at any later
    // point is undone by the next call.
    journal.write(base, id).map_err(|e| file_error(e, base))?;
    match write_planned(base, id, planned, &mut journal) {
        Ok(written) => changed.extend(written),
        Err(e) => return Err(undo(base, id, &journal, file_error(e, base))),
    }
    test_and_reload(
        base,
        id,
        &journal,
        names,
        actions,
        "nginx refused the new files, the previous ones are back",
    )?;
    commit(base, id, &mut journal)?;
    changed.push(format!("reloaded nginx ({})", names.reload));
    Ok(changed)
}

/// Creates the directories and writes the files of `planned`, recording
/// the directories it is about to create in the journal first.
fn write_planned(
    base: &Path,
    id: &str,
    planned: &[Planned],
    journal: &mut Journal,
) -> Result<Vec<String>, FileError> {
    let mut written = Vec::new();
    for (p, file) in planned.iter().zip(journal.files.clone()) {
        let missing = missing_parents(base, &p.rel);
        if !missing.is_empty() {
            journal.created_dirs.extend(missing);
            journal.write(base, id)?;
        }
        files::create_parents(base, &p.rel)?;
        let path = base.join(&p.rel);
        if files::replace(&path, &p.contents, file.existed)? {
            written.push(format!("wrote {}", path.display()));
        }
    }
    Ok(written)
}

/// The directories `create_parents` would create for `rel`.
fn missing_parents(base: &Path, rel: &Path) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    let mut dir = PathBuf::new();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            dir.push(c);
            if !base.join(&dir).is_dir() {
                missing.push(dir.clone());
            }
        }
    }
    missing
}

/// Deletes the files at `rels` (relative to `base`) for certificate `id`
/// and lets nginx test and reload its configuration without them. Nothing
/// happens when none of them exists. When the test fails (typically: a
/// server block still names a file) the files come back and the call is
/// `rejected`: the operator must first drop that server block (or point it
/// elsewhere). A failed reload brings them back too (`transient`). Returns
/// a line per file or directory removed and one for the reload.
pub fn remove(
    base: &Path,
    id: &str,
    rels: &[PathBuf],
    names: &ActionNames,
    actions: &impl Actions,
) -> Result<Vec<String>, ConnectorError> {
    names.check_granted(actions)?;
    check_directory(base)?;
    let mut changed = recover(base, id)?.unwrap_or_default();
    let mut existing = Vec::new();
    for rel in rels {
        if files::read_optional(&base.join(rel))
            .map_err(|e| file_error(e, base))?
            .is_some()
        {
            existing.push(JournalFile {
                rel: rel.clone(),
                existed: true,
            });
        }
    }
    if existing.is_empty() {
        return Ok(changed);
    }

    let mut journal = Journal {
        committed: false,
        files: existing,
        created_dirs: Vec::new(),
    };
    journal.write(base, id).map_err(|e| file_error(e, base))?;
    let mut removed = Vec::new();
    for f in &journal.files {
        let path = base.join(&f.rel);
        match files::set_aside(&path) {
            Ok(_) => removed.push(format!("removed {}", path.display())),
            Err(e) => return Err(undo(base, id, &journal, file_error(e, base))),
        }
    }
    test_and_reload(
        base,
        id,
        &journal,
        names,
        actions,
        "nginx's configuration still needs the certificate files, so they were put back; \
         remove the server block naming them (or its ssl_certificate lines) first",
    )?;
    commit(base, id, &mut journal)?;
    for f in &journal.files {
        files::remove_empty_parents(base, &f.rel, &mut removed);
    }
    changed.extend(removed);
    changed.push(format!("reloaded nginx ({})", names.reload));
    Ok(changed)
}
