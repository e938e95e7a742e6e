//! What a call knows beyond its arguments (contract 1.1 `context`, `store`
//! and `challenges` imports), and what it leaves behind for the host.
//!
//! Every 1.1 import is answered from a [`CallContext`] the caller prepares
//! before the call, and everything the guest asks the host to do is
//! collected into [`CallEffects`] the caller applies after it. Nothing in
//! these imports blocks on a database or another plugin: the guest can
//! never hold a host resource open across its deadline, and the host commits
//! the effects with the job's outcome (in one transaction where it can).

use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::sync::Arc;

use crate::bindings::issuer::certplane::connector::{challenges, context, store};
use crate::bindings::types::ConnectorError;
use crate::call_state::CallState;
use crate::grants::DirGrant;

pub use crate::bindings::issuer::certplane::connector::challenges::{
    Challenge, ChallengeKind, ChallengeState, ChallengeStatus,
};

/// Most keys one instance may keep in its store.
pub const STORE_MAX_KEYS: usize = 32;
/// Longest store key, in bytes.
pub const STORE_MAX_KEY_BYTES: usize = 128;
/// Largest store value, in bytes.
pub const STORE_MAX_VALUE_BYTES: usize = 16 * 1024;
/// Most challenges one job may present.
pub const MAX_CHALLENGES: usize = 100;
/// Longest challenge id, in bytes.
pub const MAX_CHALLENGE_ID_BYTES: usize = 128;
/// Longest challenge name or value, in bytes (a DNS name is at most 253;
/// an ACME key authorization is well under 200).
pub const MAX_CHALLENGE_FIELD_BYTES: usize = 1024;

/// The job a call runs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRef {
    /// Host-side job id.
    pub id: String,
    /// 1 on the first attempt.
    pub attempt: u32,
}

/// The version an issuance replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousVersion {
    /// The leaf, PEM.
    pub certificate_pem: String,
    /// Serial number, lower-case hex.
    pub serial_hex: String,
    /// The CA's id of the certificate, when it returned one.
    pub ca_certificate_id: Option<String>,
    /// The CA order it was issued under, when there was one.
    pub ca_order_id: Option<String>,
    /// End of validity, Unix seconds.
    pub not_after: u64,
}

/// What the 1.1 imports answer during one call.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// `context.current-job`.
    pub job: Option<JobRef>,
    /// `context.predecessor`.
    pub predecessor: Option<PreviousVersion>,
    /// `context.options`: a JSON object.
    pub options: String,
    /// The instance's store as it was when the call started.
    pub store: BTreeMap<String, String>,
    /// `challenges.supported`: the kinds routed per identifier.
    pub routes: BTreeMap<String, Vec<ChallengeKind>>,
    /// `challenges.status`: the job's challenges by id.
    pub challenges: BTreeMap<String, ChallengeStatus>,
}

impl Default for CallContext {
    fn default() -> Self {
        CallContext {
            job: None,
            predecessor: None,
            options: "{}".into(),
            store: BTreeMap::new(),
            routes: BTreeMap::new(),
            challenges: BTreeMap::new(),
        }
    }
}

/// What a call asked the host to do; the caller applies it after the call,
/// whatever the call's outcome.
#[derive(Debug, Clone, Default)]
pub struct CallEffects {
    /// Store keys set (`Some`) or deleted (`None`) during the call.
    pub store_writes: BTreeMap<String, Option<String>>,
    /// Challenges to publish.
    pub presented: Vec<Challenge>,
    /// Challenge ids to withdraw.
    pub withdrawn: Vec<String>,
}

impl CallEffects {
    /// Whether the call left nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.store_writes.is_empty() && self.presented.is_empty() && self.withdrawn.is_empty()
    }
}

/// The per-call side of the 1.1 imports, held in [`CallState`].
pub(crate) struct CallScope {
    pub(crate) context: Arc<CallContext>,
    pub(crate) effects: CallEffects,
    pub(crate) directories: Arc<[DirGrant]>,
}

impl CallScope {
    pub(crate) fn new(context: Arc<CallContext>, directories: Arc<[DirGrant]>) -> Self {
        CallScope {
            context,
            effects: CallEffects::default(),
            directories,
        }
    }

    /// The store as the guest sees it now: the snapshot plus this call's
    /// writes.
    fn store_get(&self, key: &str) -> Option<String> {
        match self.effects.store_writes.get(key) {
            Some(written) => written.clone(),
            None => self.context.store.get(key).cloned(),
        }
    }

    fn store_len_with(&self, key: &str) -> usize {
        let mut keys: std::collections::BTreeSet<&str> =
            self.context.store.keys().map(String::as_str).collect();
        for (k, v) in &self.effects.store_writes {
            if v.is_some() {
                keys.insert(k);
            } else {
                keys.remove(k.as_str());
            }
        }
        keys.insert(key);
        keys.len()
    }
}

impl context::Host for CallState {
    fn current_job(&mut self) -> Option<context::Job> {
        self.scope.context.job.as_ref().map(|j| context::Job {
            id: j.id.clone(),
            attempt: j.attempt,
        })
    }

    fn predecessor(&mut self) -> Option<context::PreviousVersion> {
        self.scope
            .context
            .predecessor
            .as_ref()
            .map(|p| context::PreviousVersion {
                certificate_pem: p.certificate_pem.clone(),
                serial_hex: p.serial_hex.clone(),
                ca_certificate_id: p.ca_certificate_id.clone(),
                ca_order_id: p.ca_order_id.clone(),
                not_after: p.not_after,
            })
    }

    fn options(&mut self) -> String {
        self.scope.context.options.clone()
    }

    fn host_path(&mut self, guest_path: String) -> Option<String> {
        host_path(&self.scope.directories, &guest_path)
    }
}

/// The host path behind `guest_path` when it lies inside a granted
/// directory. Only lexically normal paths are mapped (no `..`), so the
/// answer never names anything outside the grant.
fn host_path(directories: &[DirGrant], guest_path: &str) -> Option<String> {
    let guest = Path::new(guest_path);
    if guest
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return None;
    }
    directories.iter().find_map(|dir| {
        let rest = guest.strip_prefix(&dir.guest_path).ok()?;
        let joined = dir.known_as.as_ref().unwrap_or(&dir.host_path).join(rest);
        joined.to_str().map(str::to_owned)
    })
}

impl store::Host for CallState {
    fn get(&mut self, key: String) -> Option<String> {
        self.scope.store_get(&key)
    }

    fn set(&mut self, key: String, value: String) -> Result<(), store::StoreError> {
        if key.is_empty() || key.len() > STORE_MAX_KEY_BYTES {
            return Err(store::StoreError::TooLarge(format!(
                "store keys are 1 to {STORE_MAX_KEY_BYTES} bytes"
            )));
        }
        if value.len() > STORE_MAX_VALUE_BYTES {
            return Err(store::StoreError::TooLarge(format!(
                "store values are at most {STORE_MAX_VALUE_BYTES} bytes (got {})",
                value.len()
            )));
        }
        if self.scope.store_len_with(&key) > STORE_MAX_KEYS {
            return Err(store::StoreError::TooLarge(format!(
                "an instance keeps at most {STORE_MAX_KEYS} store keys"
            )));
        }
        self.scope.effects.store_writes.insert(key, Some(value));
        Ok(())
    }

    fn delete(&mut self, key: String) {
        if key.is_empty() || key.len() > STORE_MAX_KEY_BYTES {
            return;
        }
        self.scope.effects.store_writes.insert(key, None);
    }
}

impl challenges::Host for CallState {
    fn supported(&mut self, identifier: String) -> Vec<ChallengeKind> {
        let name = identifier.trim_start_matches("*.");
        self.scope
            .context
            .routes
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    fn present(&mut self, list: Vec<Challenge>) -> Result<(), ConnectorError> {
        let already = self.scope.effects.presented.len() + self.scope.context.challenges.len();
        if already + list.len() > MAX_CHALLENGES {
            return Err(ConnectorError::Rejected(format!(
                "a job presents at most {MAX_CHALLENGES} challenges"
            )));
        }
        for challenge in &list {
            check_challenge(challenge)?;
            let routed = self.supported(challenge.identifier.clone());
            if !routed.contains(&challenge.kind) {
                return Err(ConnectorError::InvalidConfig(format!(
                    "no {} route for {}: configure how this issuer's challenges are served",
                    kind_name(challenge.kind),
                    challenge.identifier
                )));
            }
        }
        self.scope.effects.presented.extend(list);
        Ok(())
    }

    fn status(&mut self, ids: Vec<String>) -> Vec<ChallengeStatus> {
        ids.into_iter()
            .take(MAX_CHALLENGES)
            .map(|id| match self.scope.context.challenges.get(&id) {
                Some(status) => status.clone(),
                None => ChallengeStatus {
                    message: Some(if self.scope.effects.presented.iter().any(|c| c.id == id) {
                        "presented in this call: published after it returns".into()
                    } else {
                        "no such challenge in this job".into()
                    }),
                    state: if self.scope.effects.presented.iter().any(|c| c.id == id) {
                        ChallengeState::Pending
                    } else {
                        ChallengeState::Failed
                    },
                    id,
                },
            })
            .collect()
    }

    fn withdraw(&mut self, ids: Vec<String>) {
        for id in ids.into_iter().take(MAX_CHALLENGES) {
            if id.len() <= MAX_CHALLENGE_ID_BYTES && !self.scope.effects.withdrawn.contains(&id) {
                self.scope.effects.withdrawn.push(id);
            }
        }
    }
}

/// The wire name of a challenge kind.
pub fn kind_name(kind: ChallengeKind) -> &'static str {
    match kind {
        ChallengeKind::Http01 => "http-01",
        ChallengeKind::Dns01 => "dns-01",
    }
}

/// Guest strings of a challenge are bounded and shaped before the host
/// stores or serves any of them.
fn check_challenge(c: &Challenge) -> Result<(), ConnectorError> {
    let bad = |what: &str| Err(ConnectorError::Rejected(format!("challenge {what}")));
    if c.id.is_empty()
        || c.id.len() > MAX_CHALLENGE_ID_BYTES
        || !c
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return bad("id must be 1 to 128 bytes of [A-Za-z0-9._-]");
    }
    if c.identifier.is_empty() || c.identifier.len() > 253 {
        return bad("identifier must be a DNS name");
    }
    if c.name.is_empty()
        || c.name.len() > MAX_CHALLENGE_FIELD_BYTES
        || c.value.is_empty()
        || c.value.len() > MAX_CHALLENGE_FIELD_BYTES
    {
        return bad("name and value must be 1 to 1024 bytes");
    }
    let printable = |s: &str| s.bytes().all(|b| (0x21..0x7f).contains(&b));
    if !printable(&c.name) || !printable(&c.value) || !printable(&c.identifier) {
        return bad("name, value and identifier must be printable ASCII without spaces");
    }
    if c.kind == ChallengeKind::Http01
        && !c
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        // The token becomes a file name and a URL path segment.
        return bad("http-01 token must be base64url characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(host: &str, guest: &str) -> DirGrant {
        DirGrant {
            host_path: host.into(),
            guest_path: guest.into(),
            writable: true,
            known_as: None,
        }
    }

    #[test]
    fn host_paths_map_only_inside_grants() {
        let dirs = [grant("/srv/www", "/webroot")];
        assert_eq!(
            host_path(&dirs, "/webroot/a/b.pem").as_deref(),
            Some("/srv/www/a/b.pem")
        );
        assert_eq!(host_path(&dirs, "/webroot/../etc/passwd"), None);
        assert_eq!(host_path(&dirs, "/other/x"), None);
        assert_eq!(host_path(&dirs, "/webrootx/y"), None);
    }

    #[test]
    fn a_held_directory_maps_to_the_path_it_is_known_by() {
        let mut held = grant("/proc/self/fd/7", "/certs");
        held.known_as = Some("/etc/ssl/certplane".into());
        assert_eq!(
            host_path(&[held], "/certs/web/fullchain.pem").as_deref(),
            Some("/etc/ssl/certplane/web/fullchain.pem"),
            "a web server cannot open the agent's handle path"
        );
    }

    #[test]
    fn challenge_strings_are_bounded_and_shaped() {
        let ok = Challenge {
            id: "c-1".into(),
            kind: ChallengeKind::Http01,
            identifier: "www.example.com".into(),
            name: "tok_EN-1".into(),
            value: "tok.thumb".into(),
        };
        assert!(check_challenge(&ok).is_ok());
        for bad in [
            Challenge {
                id: "a/b".into(),
                ..ok.clone()
            },
            Challenge {
                name: "../x".into(),
                ..ok.clone()
            },
            Challenge {
                value: "x".repeat(2000),
                ..ok.clone()
            },
            Challenge {
                value: "a b".into(),
                ..ok.clone()
            },
            Challenge {
                identifier: String::new(),
                ..ok.clone()
            },
        ] {
            assert!(check_challenge(&bad).is_err(), "{bad:?}");
        }
    }
}
