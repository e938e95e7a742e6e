//! Bounds on everything a guest hands the host, and the redaction of the
//! instance's secrets from it.
//!
//! A connector is untrusted: whatever it returns or logs is cut to a bound
//! before it leaves the runtime (error messages, log lines, descriptive
//! lists), or refused as a contract violation when the host must keep it
//! verbatim and a cut would corrupt it (order ids and state, certificates).
//! Secret values of the instance are replaced by `[redacted:<name>]` in
//! every error message and log line, so a connector that echoes its API key
//! into an error cannot get it stored in a job's `last_error` or the logs.

use std::collections::BTreeMap;

use crate::bindings::issuer::exports::certplane::connector::issuer_api::IssueResult;
use crate::bindings::target::exports::certplane::connector::target_api::DeployResult;
use crate::bindings::types::{ConnectorError, PluginInfo};
use crate::error::CallError;
use crate::instance::Secret;

/// Longest message a guest error may carry out of the runtime (connector
/// error messages, rate-limit messages, trap output, denial texts).
pub const MAX_ERROR_MESSAGE: usize = 4 * 1024;
/// Longest order id an issuer may return (it is stored and shown).
pub const MAX_ORDER_ID: usize = 1024;
/// Longest order `state` an issuer may return; the contract (WIT) says
/// "at most 64 KiB".
pub const MAX_ORDER_STATE: usize = 64 * 1024;
/// Most PEM text (leaf plus chain) an issued certificate may have. Real
/// chains are a few KiB; this leaves room for long chains and comments.
pub const MAX_CERTIFICATE_PEM: usize = 1024 * 1024;
/// Most intermediates an issued certificate may come with.
pub const MAX_CHAIN_ENTRIES: usize = 16;
/// Longest short identifier a guest returns (a CA certificate id, an
/// endpoint's host or server name, a `describe` field other than the schema).
pub const MAX_SHORT_TEXT: usize = 1024;
/// Most entries kept of a descriptive list (`deploy-result.changed`, the
/// list `remove` returns, `describe().secret-names`).
pub const MAX_LIST_ENTRIES: usize = 64;
/// Longest `describe().settings-schema`.
pub const MAX_SETTINGS_SCHEMA: usize = 64 * 1024;

/// Most capability denials kept per call (each cut to [`MAX_SHORT_TEXT`]).
pub const MAX_DENIALS: usize = 16;

/// Secret values shorter than this are not redacted: replacing every
/// occurrence of, say, `"1"` or `"ab"` would shred ordinary text, and the
/// pattern of markers would itself reveal the short value. Such a value is
/// no secret worth the name anyway.
pub const MIN_REDACTED_SECRET: usize = 4;

/// Replaces the secret values of one instance by `[redacted:<name>]`. Built
/// once per [`crate::PluginInstance`] and applied to every error message
/// and log line of its calls.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// (value, marker), longest value first so a secret that contains
    /// another is replaced whole.
    secrets: Vec<(String, String)>,
    longest: usize,
}

impl Redactor {
    /// A redactor for `secrets` (values shorter than
    /// [`MIN_REDACTED_SECRET`] bytes are skipped).
    pub fn new(secrets: &BTreeMap<String, Secret>) -> Self {
        let mut list: Vec<(String, String)> = secrets
            .iter()
            .filter(|(_, v)| v.expose().len() >= MIN_REDACTED_SECRET)
            .map(|(name, v)| (v.expose().to_string(), format!("[redacted:{name}]")))
            .collect();
        list.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let longest = list.first().map_or(0, |(v, _)| v.len());
        Redactor {
            secrets: list,
            longest,
        }
    }

    /// `text` with every secret value replaced by its marker.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (value, marker) in &self.secrets {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), marker);
            }
        }
        out
    }

    /// Like [`Redactor::redact`] for text that was cut at its end (a full
    /// output pipe): a trailing prefix of a secret (at least
    /// [`MIN_REDACTED_SECRET`] bytes) is replaced too, since the cut may
    /// have split a secret.
    pub fn redact_truncated(&self, text: &str) -> String {
        let mut out = self.redact(text);
        for (value, marker) in &self.secrets {
            let longest_prefix = (MIN_REDACTED_SECRET..value.len())
                .rev()
                .filter(|&n| value.is_char_boundary(n))
                .find(|&n| out.ends_with(&value[..n]));
            if let Some(n) = longest_prefix {
                out.truncate(out.len() - n);
                out.push_str(marker);
            }
        }
        out
    }

    /// `text` redacted, then cut to at most `max` bytes (on a char
    /// boundary) with a `… (N bytes cut)` suffix when anything was cut.
    /// Redaction comes first so that a cut can never leave half a secret
    /// behind; only the first `max` bytes plus the longest secret are
    /// scanned, so a 20 MiB message costs no more than a short one.
    pub fn bound(&self, text: &str, max: usize) -> String {
        let window = floor_char_boundary(text, max.saturating_add(self.longest));
        let redacted = self.redact(&text[..window]);
        let dropped_before = text.len() - window;
        if redacted.len() <= max && dropped_before == 0 {
            return redacted;
        }
        let keep = floor_char_boundary(&redacted, max);
        let cut = redacted.len() - keep + dropped_before;
        if cut == 0 {
            return redacted;
        }
        let mut out = redacted;
        out.truncate(keep);
        out.push_str(&format!("… ({cut} bytes cut)"));
        out
    }

    /// A connector error with its message redacted and bounded.
    pub(crate) fn connector_error(&self, error: ConnectorError) -> ConnectorError {
        let b = |m: String| self.bound(&m, MAX_ERROR_MESSAGE);
        match error {
            ConnectorError::InvalidConfig(m) => ConnectorError::InvalidConfig(b(m)),
            ConnectorError::Unauthorized(m) => ConnectorError::Unauthorized(b(m)),
            ConnectorError::Rejected(m) => ConnectorError::Rejected(b(m)),
            ConnectorError::RateLimited(mut r) => {
                r.message = b(r.message);
                ConnectorError::RateLimited(r)
            }
            ConnectorError::Transient(m) => ConnectorError::Transient(b(m)),
            ConnectorError::Unsupported(m) => ConnectorError::Unsupported(b(m)),
        }
    }
}

impl Redactor {
    /// `error` with every guest-influenced string redacted and bounded: the
    /// one gate every [`CallError`] of a call passes before it leaves the
    /// runtime.
    pub(crate) fn call_error(&self, error: CallError) -> CallError {
        let msg = |m: String| self.bound(&m, MAX_ERROR_MESSAGE);
        match error {
            CallError::Connector { plugin, error } => CallError::Connector {
                plugin,
                error: self.connector_error(error),
            },
            CallError::CapabilityDenied {
                plugin,
                mut denials,
                error,
            } => {
                if denials.len() > MAX_DENIALS {
                    let more = denials.len() - MAX_DENIALS;
                    denials.truncate(MAX_DENIALS);
                    denials.push(format!("… ({more} more)"));
                }
                CallError::CapabilityDenied {
                    plugin,
                    denials: denials
                        .iter()
                        .map(|d| self.bound(d, MAX_SHORT_TEXT))
                        .collect(),
                    error: error.map(|e| self.connector_error(e)),
                }
            }
            CallError::Trap { plugin, message } => CallError::Trap {
                plugin,
                message: msg(message),
            },
            CallError::Instantiate { plugin, message } => CallError::Instantiate {
                plugin,
                message: msg(message),
            },
            CallError::Contract { plugin, message } => CallError::Contract {
                plugin,
                message: msg(message),
            },
            e @ (CallError::Deadline { .. }
            | CallError::MemoryLimit { .. }
            | CallError::WrongKind { .. }) => e,
        }
    }
}

/// The largest char boundary of `s` at or below `max`.
pub(crate) fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// What a successful call returned, checked (and where harmless, cut)
/// before the host sees it. `Err` is a contract violation, described
/// without the offending content.
pub(crate) trait GuestOutput {
    fn bound(&mut self, redactor: &Redactor) -> Result<(), String>;
}

fn at_most(what: &str, len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!("{what} is {len} bytes; at most {max} are allowed"));
    }
    Ok(())
}

/// Cuts a descriptive list (audit text): at most [`MAX_LIST_ENTRIES`]
/// entries (the last says how many were dropped), each redacted and cut to
/// [`MAX_SHORT_TEXT`]. Cut rather than refused: the work it describes is
/// done, and failing it over its description would misreport it.
fn bound_list(list: &mut Vec<String>, redactor: &Redactor) {
    if list.len() > MAX_LIST_ENTRIES {
        let dropped = list.len() - (MAX_LIST_ENTRIES - 1);
        list.truncate(MAX_LIST_ENTRIES - 1);
        list.push(format!("… ({dropped} more entries cut)"));
    }
    for entry in list.iter_mut() {
        *entry = redactor.bound(entry, MAX_SHORT_TEXT);
    }
}

impl GuestOutput for () {
    fn bound(&mut self, _: &Redactor) -> Result<(), String> {
        Ok(())
    }
}

impl GuestOutput for PluginInfo {
    fn bound(&mut self, _: &Redactor) -> Result<(), String> {
        at_most("describe().name", self.name.len(), MAX_SHORT_TEXT)?;
        at_most("describe().version", self.version.len(), MAX_SHORT_TEXT)?;
        at_most(
            "describe().settings-schema",
            self.settings_schema.len(),
            MAX_SETTINGS_SCHEMA,
        )?;
        if self.secret_names.len() > MAX_LIST_ENTRIES {
            return Err(format!(
                "describe().secret-names has {} entries; at most {MAX_LIST_ENTRIES} are allowed",
                self.secret_names.len()
            ));
        }
        for name in &self.secret_names {
            at_most("a secret name", name.len(), MAX_SHORT_TEXT)?;
        }
        // Shown to operators only: cut, not refused.
        self.description = Redactor::default().bound(&self.description, MAX_SHORT_TEXT);
        Ok(())
    }
}

impl GuestOutput for IssueResult {
    fn bound(&mut self, _: &Redactor) -> Result<(), String> {
        match self {
            // The host stores an order verbatim and hands it back to `poll`;
            // a cut id or state would be a different order, so refuse.
            IssueResult::Pending(order) => {
                at_most("the order id", order.id.len(), MAX_ORDER_ID)?;
                at_most("the order state", order.state.len(), MAX_ORDER_STATE)
            }
            IssueResult::Issued(cert) => {
                if cert.chain_pem.len() > MAX_CHAIN_ENTRIES {
                    return Err(format!(
                        "the chain has {} certificates; at most {MAX_CHAIN_ENTRIES} are allowed",
                        cert.chain_pem.len()
                    ));
                }
                let pem = cert.certificate_pem.len()
                    + cert.chain_pem.iter().map(String::len).sum::<usize>();
                at_most(
                    "the certificate PEM (leaf and chain)",
                    pem,
                    MAX_CERTIFICATE_PEM,
                )?;
                if let Some(id) = &cert.ca_certificate_id {
                    at_most("the CA certificate id", id.len(), MAX_SHORT_TEXT)?;
                }
                Ok(())
            }
        }
    }
}

impl GuestOutput for DeployResult {
    fn bound(&mut self, redactor: &Redactor) -> Result<(), String> {
        bound_list(&mut self.changed, redactor);
        if let Some(at) = &self.verify_at {
            // The agent connects there: a cut name would probe another host.
            at_most("verify-at.host", at.host.len(), MAX_SHORT_TEXT)?;
            at_most(
                "verify-at.server-name",
                at.server_name.len(),
                MAX_SHORT_TEXT,
            )?;
        }
        Ok(())
    }
}

/// Longest wait before asking for a renewal window again that a connector
/// may suggest (RFC 9773 servers suggest hours).
pub const MAX_RENEWAL_RECHECK_SECS: u32 = 24 * 3600;

impl GuestOutput for Option<crate::lifecycle::RenewalInfo> {
    fn bound(&mut self, _: &Redactor) -> Result<(), String> {
        if let Some(window) = self {
            if window.end < window.start {
                return Err("renewal-window ends before it starts".into());
            }
            if let Some(url) = &window.explanation_url {
                at_most("renewal-window.explanation-url", url.len(), MAX_SHORT_TEXT)?;
            }
            // Clamped: a CA cannot park the check for longer than a day.
            if let Some(secs) = &mut window.retry_after_secs {
                *secs = (*secs).min(MAX_RENEWAL_RECHECK_SECS);
            }
        }
        Ok(())
    }
}

impl GuestOutput for Vec<String> {
    fn bound(&mut self, redactor: &Redactor) -> Result<(), String> {
        bound_list(self, redactor);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(pairs: &[(&str, &str)]) -> Redactor {
        let secrets = pairs
            .iter()
            .map(|(n, v)| (n.to_string(), Secret::new(*v)))
            .collect();
        Redactor::new(&secrets)
    }

    #[test]
    fn secrets_are_replaced_and_short_ones_skipped() {
        let r = redactor(&[("token", "s3cr3t-value"), ("pin", "42"), ("inner", "cr3t")]);
        assert_eq!(
            r.redact("key s3cr3t-value and cr3t, 42"),
            "key [redacted:token] and [redacted:inner], 42"
        );
    }

    #[test]
    fn bound_cuts_on_char_boundaries_with_a_suffix() {
        let r = Redactor::default();
        assert_eq!(r.bound("short", 10), "short");
        assert_eq!(r.bound("héllo", 2), "h… (5 bytes cut)");
        let big = "x".repeat(20 << 20);
        let cut = r.bound(&big, MAX_ERROR_MESSAGE);
        assert!(cut.len() < MAX_ERROR_MESSAGE + 32, "{}", cut.len());
        assert!(cut.ends_with(&format!("… ({} bytes cut)", (20 << 20) - MAX_ERROR_MESSAGE)));
    }

    #[test]
    fn bound_never_leaves_part_of_a_secret() {
        let secret = "0123456789abcdef";
        let r = redactor(&[("token", secret)]);
        for start in 0..24 {
            let text = format!("{}{secret}{}", "y".repeat(start), "z".repeat(100));
            let out = r.bound(&text, 16);
            assert!(!out.contains("0123"), "start {start}: {out}");
        }
    }

    #[test]
    fn a_secret_split_by_a_full_pipe_is_redacted() {
        let r = redactor(&[("token", "0123456789")]);
        assert_eq!(r.redact_truncated("out: 012345"), "out: [redacted:token]");
        assert_eq!(r.redact_truncated("out: 012"), "out: 012");
    }

    #[test]
    fn long_lists_are_cut() {
        let mut list: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        list.push("z".repeat(5000));
        list.bound(&Redactor::default()).unwrap();
        assert_eq!(list.len(), MAX_LIST_ENTRIES);
        assert_eq!(list[MAX_LIST_ENTRIES - 1], "… (38 more entries cut)");
    }
}
