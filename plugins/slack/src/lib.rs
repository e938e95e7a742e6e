//! `slack`: a certplane notifier that posts events to a Slack channel
//! through an [incoming webhook](https://api.slack.com/messaging/webhooks).
//!
//! Secrets:
//! - `webhook_url` (required): the incoming webhook URL,
//!   `https://hooks.slack.com/services/T…/B…/…`. Anyone holding it can post
//!   to the channel, so it is a secret, never a setting, and it never
//!   appears in errors or logs (they name `scheme://host:port` only). The
//!   instance's host grants must name its scheme, host and port
//!   (`https://hooks.slack.com`).
//!
//! Settings (all optional):
//! - `min_severity`: `trace`, `debug`, `info` (default), `warn` or `error`;
//!   events below it are dropped without a request.
//! - `events`: the event kinds to send (see `docs/events.md`); default all.
//!   Other kinds are dropped without a request.
//! - `mention`: Slack mentions put in front of **error**-severity messages,
//!   e.g. `<!channel>`, `<!here>`, `<@U024BE7LH>`, `<!subteam^SAZ94GDB8>`,
//!   several separated by spaces.
//!
//! The message is `{"text": fallback, "blocks": [...]}`: a header (severity
//! emoji and what happened), a section with the summary (after the
//! mention), a section of fields (certificate, DNS names, not-after,
//! expiry stage, target, agent, last heartbeat, job, issuer, owner, serial:
//! the first ten present), a section with the reason, and a context line
//! with the event kind, subject, id and time. The fallback `text` is one
//! line for notifications. Everything taken from the event is escaped
//! (`&`, `<`, `>`), so data can neither mention nor link; only the
//! operator's `mention` and the connector's own date token are Slack
//! control sequences. Slack's limits are kept by cutting text with `…`:
//! header 150 characters, section text 3000, fields 10 of 2000 each.
//!
//! Outcomes: 2xx is success (Slack answers `200 ok`). Redirects are not
//! followed and are `invalid-config` (the URL is wrong). Slack's plain-text
//! errors: `400 invalid_payload` (and every other 400) is `rejected`;
//! `403 action_prohibited`, `404 channel_not_found`, `410
//! channel_is_archived` (and every other 403, 404, 410) are
//! `invalid-config`: the operator must fix the channel or the webhook;
//! `401` and `403 invalid_token` are `unauthorized`. `429` is
//! `rate-limited` with the `Retry-After` hint. `408`, 5xx and transport
//! failures are `transient`; other 4xx `rejected`.

use certplane_sdk::notifier::{Event, Notifier};
use certplane_sdk::notify::{self, parse_details, text_at};
use certplane_sdk::{ConnectorError, Level, PluginInfo, http, log, settings};
use serde::Deserialize;
use serde_json::{Value, json};

/// The connector's name; equals the manifest's `name`.
pub const NAME: &str = "slack";

/// Name of the secret holding the incoming webhook URL.
pub const WEBHOOK_URL: &str = "webhook_url";

/// How much of an error answer a message quotes.
const QUOTED_BYTES: usize = 256;

/// Slack's limit on a header block's text, in characters.
pub const MAX_HEADER_TEXT: usize = 150;
/// Slack's limit on a section block's text, in characters.
pub const MAX_SECTION_TEXT: usize = 3000;
/// Slack's limit on the number of fields of a section.
pub const MAX_FIELDS: usize = 10;
/// Slack's limit on one field's text, in characters.
pub const MAX_FIELD_TEXT: usize = 2000;
/// The fallback `text` (shown in notifications) is one line; Slack allows
/// far more, nobody reads more.
pub const MAX_FALLBACK_TEXT: usize = 3000;
/// Parts of the context line (kind, subject, id) are short in practice; a
/// longer one is cut so the line stays readable.
const MAX_CONTEXT_PART: usize = 200;

pub use certplane_sdk::notify::{KINDS, facts, origin, parse_level, rfc3339, scrub, title};

/// JSON Schema (draft 2020-12) of the settings.
pub const SETTINGS_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "slack settings",
  "type": "object",
  "properties": {
    "min_severity": {
      "enum": ["trace", "debug", "info", "warn", "error"],
      "default": "info",
      "description": "Events below this severity are not sent."
    },
    "events": {
      "type": "array",
      "minItems": 1,
      "uniqueItems": true,
      "items": {
        "enum": [
          "certificate.issued", "certificate.renewed", "certificate.expiring",
          "certificate.expired", "issuance.failed", "deployment.failed",
          "deployment.recovered", "verification.mismatch",
          "verification.recovered", "agent.offline", "agent.online",
          "agent.retired", "job.failed"
        ]
      },
      "description": "Event kinds to send; all when omitted."
    },
    "mention": {
      "type": "string",
      "pattern": "^ *<(!channel|!here|!everyone|@[A-Z0-9]{1,32}|!subteam\\^[A-Z0-9]{1,32})>( +<(!channel|!here|!everyone|@[A-Z0-9]{1,32}|!subteam\\^[A-Z0-9]{1,32})>)* *$",
      "description": "Slack mentions put in front of error-severity messages, e.g. <!channel>."
    }
  },
  "additionalProperties": false
}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    min_severity: Option<String>,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    mention: Option<String>,
}

/// The instance's settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Events below this are not sent.
    pub min_severity: Level,
    /// The kinds to send; `None` sends every kind.
    pub events: Option<Vec<String>>,
    /// Mentions for error-severity messages, normalised to single spaces.
    pub mention: Option<String>,
}

impl Settings {
    /// Parses and checks the settings object (JSON text); `invalid-config`
    /// naming the setting otherwise.
    pub fn from_json(json: &str) -> Result<Settings, ConnectorError> {
        let raw: RawSettings = settings::settings_from_json(json)?;
        let min_severity = notify::min_severity_setting(raw.min_severity.as_deref())?;
        let events = notify::events_setting(raw.events)?;
        let mention = match raw.mention {
            None => None,
            Some(m) if m.trim().is_empty() => None,
            Some(m) => Some(parse_mention(&m)?),
        };
        Ok(Settings {
            min_severity,
            events,
            mention,
        })
    }

    /// Why `event` is not sent, or `None` when it is.
    pub fn skip_reason(&self, event: &Event) -> Option<String> {
        notify::skip_reason(self.min_severity, self.events.as_deref(), event)
    }
}

/// Checks a `mention` setting token by token and joins the tokens with
/// single spaces. Only mention syntax passes: this text goes to Slack
/// unescaped, so it must not smuggle links or formatting.
pub fn parse_mention(text: &str) -> Result<String, ConnectorError> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    if let Some(bad) = tokens.iter().find(|t| !is_mention(t)) {
        return Err(ConnectorError::invalid_config(format!(
            "setting `mention`: {bad:?} is not a Slack mention; use <!channel>, <!here>, \
             <!everyone>, <@USERID> or <!subteam^GROUPID>, separated by spaces"
        )));
    }
    Ok(tokens.join(" "))
}

fn is_mention(token: &str) -> bool {
    let Some(inner) = token.strip_prefix('<').and_then(|t| t.strip_suffix('>')) else {
        return false;
    };
    let is_id = |id: &str| {
        !id.is_empty()
            && id.len() <= 32
            && id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    };
    match inner {
        "!channel" | "!here" | "!everyone" => true,
        _ => {
            inner.strip_prefix('@').is_some_and(is_id)
                || inner.strip_prefix("!subteam^").is_some_and(is_id)
        }
    }
}

/// Checks the `webhook_url` secret: an absolute http(s) URL of an incoming
/// webhook (path under `/services/`). Messages never quote the URL: its path
/// is the credential.
pub fn webhook_url(secret: &str) -> Result<String, ConnectorError> {
    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConnectorError::invalid_config(format!(
            "secret `{WEBHOOK_URL}` contains whitespace or control characters: store the URL alone"
        )));
    }
    let parts = http::parse_url(secret).map_err(|_| {
        ConnectorError::invalid_config(format!(
            "secret `{WEBHOOK_URL}` is not an absolute https:// URL \
             (Slack shows it as https://hooks.slack.com/services/…)"
        ))
    })?;
    // Workflow Builder's https://hooks.slack.com/triggers/… URLs look alike
    // but take the workflow's own variables, not a message.
    if !parts.path_with_query.starts_with("/services/") {
        return Err(ConnectorError::invalid_config(format!(
            "secret `{WEBHOOK_URL}` is not an incoming webhook URL: its path must start with \
             /services/ (https://hooks.slack.com/services/…)"
        )));
    }
    Ok(secret.to_string())
}

/// Whether line breaks of a text survive (multi-line sections) or become
/// spaces (header, fields, fallback).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lines {
    Keep,
    Join,
}

/// `text` escaped for Slack mrkdwn (`&`, `<`, `>`) and cut to at most
/// `max` characters after escaping, ending in `…` when cut. Control
/// characters become spaces (line breaks too unless kept). The cut never
/// splits an entity.
fn escape_fit(text: &str, max: usize, lines: Lines) -> String {
    let piece = |c: char| -> &'static str {
        match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            '\n' if lines == Lines::Keep => "\n",
            c if c.is_control() => " ",
            _ => "",
        }
    };
    let width = |c: char| match piece(c) {
        "" => 1,
        p => p.chars().count(),
    };
    let total: usize = text.chars().map(width).sum();
    let budget = if total <= max {
        max
    } else {
        max.saturating_sub(1)
    };
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = width(c);
        if used + w > budget {
            out.push('…');
            return out;
        }
        used += w;
        match piece(c) {
            "" => out.push(c),
            p => out.push_str(p),
        }
    }
    out
}

/// `text` for a place Slack shows literally (header `plain_text`): one
/// line, cut to `max` characters with `…`.
fn plain_fit(text: &str, max: usize) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().count() <= max {
        return line;
    }
    let mut out: String = line.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The emoji that styles a severity.
pub fn emoji(level: Level) -> &'static str {
    match level {
        Level::Error => ":red_circle:",
        Level::Warn => ":warning:",
        Level::Info => ":large_green_circle:",
        Level::Debug | Level::Trace => ":information_source:",
    }
}

/// Text inside a code span: a backtick would end it early.
fn code_safe(text: &str) -> String {
    text.replace('`', "'")
}

fn mrkdwn(text: String) -> Value {
    json!({"type": "mrkdwn", "text": text})
}

/// The message for one event (see the crate docs).
pub fn message(settings: &Settings, event: &Event) -> Value {
    let (details, raw) = parse_details(&event.details);
    let style = emoji(event.severity);
    let title = title(&event.kind);
    let summary = if event.summary.trim().is_empty() {
        title.clone()
    } else {
        event.summary.clone()
    };
    let mention = match (&settings.mention, event.severity) {
        (Some(m), Level::Error) => format!("{m} "),
        _ => String::new(),
    };
    let room = |max: usize| max.saturating_sub(mention.chars().count());

    let fallback = format!(
        "{mention}{}",
        escape_fit(
            &format!("{style} {title}: {summary}"),
            room(MAX_FALLBACK_TEXT),
            Lines::Join
        )
    );
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": plain_fit(&format!("{style} {title}"), MAX_HEADER_TEXT),
                "emoji": true,
            }
        }),
        json!({
            "type": "section",
            "text": mrkdwn(format!(
                "{mention}{}",
                escape_fit(&summary, room(MAX_SECTION_TEXT), Lines::Join)
            )),
        }),
    ];

    let fields: Vec<Value> = facts(&details)
        .into_iter()
        .take(MAX_FIELDS)
        .map(|(label, value)| {
            let head = format!("*{label}*\n");
            let room = MAX_FIELD_TEXT - head.chars().count();
            let value = if label == "DNS names" {
                // Code spans keep Slack from turning names into links.
                let names: Vec<String> = value
                    .split(", ")
                    .map(|n| format!("`{}`", code_safe(n)))
                    .collect();
                escape_fit(&names.join(", "), room, Lines::Join)
            } else {
                escape_fit(&value, room, Lines::Join)
            };
            mrkdwn(format!("{head}{value}"))
        })
        .collect();
    if !fields.is_empty() {
        blocks.push(json!({"type": "section", "fields": fields}));
    }

    for (label, text) in [("Reason", text_at(&details, "/reason")), ("Details", raw)] {
        if let Some(text) = text {
            let head = format!("*{label}*\n");
            let room = MAX_SECTION_TEXT - head.chars().count();
            blocks.push(json!({
                "type": "section",
                "text": mrkdwn(format!("{head}{}", escape_fit(&text, room, Lines::Keep))),
            }));
        }
    }

    let part = |text: &str| escape_fit(&code_safe(text), MAX_CONTEXT_PART, Lines::Join);
    let mut context = format!("`{}`", part(&event.kind));
    if !event.subject.trim().is_empty() {
        context.push_str(&format!(" · {}", part(&event.subject)));
    }
    context.push_str(&format!(" · id `{}`", part(&event.id)));
    // Slack shows the date token in the reader's time zone; the text after
    // `|` is what clients that cannot show it display.
    context.push_str(&format!(
        " · <!date^{ts}^{{date_short_pretty}} {{time}}|{iso}>",
        ts = event.occurred_at,
        iso = rfc3339(event.occurred_at)
    ));
    blocks.push(json!({"type": "context", "elements": [mrkdwn(context)]}));

    json!({"text": fallback, "blocks": blocks})
}

/// What the operator should do about one of Slack's error codes.
fn hint(code: &str) -> &'static str {
    match code {
        "action_prohibited" => {
            "an admin restricted posting to the webhook's channel: allow it or create the webhook for another channel"
        }
        "channel_not_found" => {
            "the webhook's channel no longer exists: create a new webhook and update the secret `webhook_url`"
        }
        "channel_is_archived" => {
            "the webhook's channel is archived: unarchive it or create a new webhook and update the secret `webhook_url`"
        }
        "posting_to_general_channel_denied" => {
            "only admins may post to this channel: use another channel's webhook"
        }
        "invalid_token" | "no_service" | "no_team" | "team_disabled" => {
            "the webhook was revoked or removed: create a new one and update the secret `webhook_url`"
        }
        _ => "check the webhook and its channel, then update the secret `webhook_url`",
    }
}

/// The outcome of a delivery from Slack's answer (see the crate docs).
/// `request` names the request in messages (`POST https://hooks.slack.com`).
pub fn outcome(
    request: &str,
    status: u16,
    retry_after: Option<u32>,
    body: &[u8],
) -> Result<(), ConnectorError> {
    // Slack's answer, one short line: its error code.
    let code = notify::quoted(body, QUOTED_BYTES);
    let what = notify::status_line(request, status, &code);
    match status {
        200..=299 => Ok(()),
        300..=399 => Err(ConnectorError::invalid_config(format!(
            "{what}; Slack redirected the delivery, which is not followed: check the secret `{WEBHOOK_URL}`"
        ))),
        401 => Err(ConnectorError::unauthorized(format!(
            "{what}; {}",
            hint("invalid_token")
        ))),
        403 if code == "invalid_token" => Err(ConnectorError::unauthorized(format!(
            "{what}; {}",
            hint(&code)
        ))),
        403 | 404 | 410 => Err(ConnectorError::invalid_config(format!(
            "{what}; {}",
            hint(&code)
        ))),
        408 => Err(ConnectorError::transient(what)),
        429 => Err(ConnectorError::rate_limited(retry_after, what)),
        400..=499 => Err(ConnectorError::rejected(format!(
            "{what}; Slack refused this message"
        ))),
        _ => Err(ConnectorError::transient(what)),
    }
}

/// The connector.
pub struct Slack;

impl Notifier for Slack {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Posts events to a Slack incoming webhook".into(),
            settings_schema: SETTINGS_SCHEMA.into(),
            secret_names: vec![WEBHOOK_URL.into()],
        }
    }

    /// Checks settings and the secret without posting: Slack has no way to
    /// test a webhook that does not show a message in the channel.
    fn validate_config() -> Result<(), ConnectorError> {
        Settings::from_json(&settings::settings_json())?;
        let url = webhook_url(&settings::required_secret(WEBHOOK_URL)?)?;
        if !url.starts_with("https://") {
            log::warn!(
                "secret `{WEBHOOK_URL}` is a plain http:// URL: the webhook's token travels unencrypted"
            );
        }
        Ok(())
    }

    fn notify(event: Event) -> Result<(), ConnectorError> {
        let settings = Settings::from_json(&settings::settings_json())?;
        if let Some(why) = settings.skip_reason(&event) {
            log::debug!("not sending {} ({}): {why}", event.id, event.kind);
            return Ok(());
        }
        let url = webhook_url(&settings::required_secret(WEBHOOK_URL)?)?;
        let (request, response) =
            notify::post_to_webhook(&url, &message(&settings, &event), &event)?;
        outcome(
            &request,
            response.status(),
            response.retry_after_secs(),
            response.body(),
        )
    }
}

certplane_sdk::export_notifier!(Slack);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Settings {
        Settings::from_json(json).unwrap()
    }

    fn event(kind: &str, severity: Level, details: Value) -> Event {
        Event {
            id: "n-1".into(),
            kind: kind.into(),
            severity,
            summary: "web-prod deployment to edge-nginx failed".into(),
            subject: "certificate/c0ffee".into(),
            occurred_at: 1_649_367_553,
            details: details.to_string(),
        }
    }

    fn blocks(message: &Value) -> &Vec<Value> {
        message["blocks"].as_array().unwrap()
    }

    #[test]
    fn settings_defaults_and_errors() {
        let s = settings("{}");
        assert_eq!(
            s,
            Settings {
                min_severity: Level::Info,
                events: None,
                mention: None
            }
        );
        let s = settings(
            r#"{"min_severity":"warn","events":["deployment.failed"],"mention":"  <!channel>   <@U024BE7LH> "}"#,
        );
        assert_eq!(s.min_severity, Level::Warn);
        assert_eq!(s.events, Some(vec!["deployment.failed".to_string()]));
        assert_eq!(s.mention.as_deref(), Some("<!channel> <@U024BE7LH>"));
        assert_eq!(settings(r#"{"mention":" "}"#).mention, None);
        assert_eq!(
            settings(r#"{"mention":"<!subteam^SAZ94GDB8>"}"#)
                .mention
                .as_deref(),
            Some("<!subteam^SAZ94GDB8>")
        );

        for (bad, names) in [
            (r#"{"min_severity":"loud"}"#, "min_severity"),
            (r#"{"events":[]}"#, "events"),
            (r#"{"events":["certificate.issud"]}"#, "certificate.issud"),
            (r#"{"mention":"@channel"}"#, "mention"),
            (r#"{"mention":"<https://evil.example|click>"}"#, "mention"),
            (r#"{"mention":"<!channel> hello"}"#, "hello"),
            (r#"{"mention":"<@u123>"}"#, "mention"),
            (r#"{"min_sevrity":"warn"}"#, "min_sevrity"),
        ] {
            let e = Settings::from_json(bad).unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{bad}");
            assert!(e.message().contains(names), "{bad}: {}", e.message());
        }
    }

    #[test]
    fn the_schema_is_json_and_lists_every_kind() {
        let schema: Value = serde_json::from_str(SETTINGS_SCHEMA).unwrap();
        let kinds = schema
            .pointer("/properties/events/items/enum")
            .and_then(Value::as_array)
            .unwrap();
        let listed: Vec<&str> = kinds.iter().filter_map(Value::as_str).collect();
        let known: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
        assert_eq!(listed, known);
    }

    #[test]
    fn filtering_by_severity_and_kind() {
        let s = settings(r#"{"min_severity":"warn"}"#);
        assert!(
            s.skip_reason(&event("certificate.issued", Level::Info, json!({})))
                .is_some()
        );
        assert!(
            s.skip_reason(&event("agent.retired", Level::Warn, json!({})))
                .is_none()
        );
        assert!(
            s.skip_reason(&event("agent.offline", Level::Error, json!({})))
                .is_none()
        );
        let s = settings(r#"{"events":["agent.offline","job.failed"]}"#);
        let why = s
            .skip_reason(&event("deployment.failed", Level::Error, json!({})))
            .unwrap();
        assert!(why.contains("deployment.failed"), "{why}");
        assert!(
            s.skip_reason(&event("job.failed", Level::Error, json!({})))
                .is_none()
        );
        // Defaults: info and up, every kind (unknown ones too).
        let s = settings("{}");
        assert!(
            s.skip_reason(&event("certificate.issued", Level::Debug, json!({})))
                .is_some()
        );
        assert!(
            s.skip_reason(&event("something.new", Level::Info, json!({})))
                .is_none()
        );
    }

    #[test]
    fn webhook_urls() {
        assert!(webhook_url("https://hooks.slack.com/services/T0/B0/abc").is_ok());
        for bad in [
            "https://hooks.slack.com/services/T0/B0/abc\n",
            "hooks.slack.com/services/T0/B0/abc",
            "https://hooks.slack.com/triggers/T0/123/abc",
            "ftp://hooks.slack.com/services/T0/B0/abc",
        ] {
            let e = webhook_url(bad).unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{bad}");
            assert!(!e.message().contains("abc"), "{}", e.message());
        }
        assert_eq!(
            origin("https://hooks.slack.com/services/T0/B0/abc"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            origin("http://127.0.0.1:8080/services/x?y=1"),
            "http://127.0.0.1:8080"
        );
    }

    #[test]
    fn scrub_removes_the_url_from_every_class() {
        let url = "https://hooks.slack.com/services/T0/B0/secret-token?x=1";
        let shown = origin(url);
        let sdk = format!("POST {}: connection refused", http::redact_url(url));
        for e in [
            ConnectorError::transient(sdk.clone()),
            ConnectorError::invalid_config(sdk.clone()),
            ConnectorError::rate_limited(Some(3), format!("{url} slow")),
        ] {
            let kind = e.kind();
            let e = scrub(e, url, &shown);
            assert_eq!(e.kind(), kind);
            assert!(!e.message().contains("secret-token"), "{}", e.message());
            assert!(e.message().contains("https://hooks.slack.com"));
        }
        match scrub(ConnectorError::rate_limited(Some(3), "x"), url, &shown) {
            ConnectorError::RateLimited(r) => assert_eq!(r.retry_after_secs, Some(3)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn escaping_and_cutting() {
        assert_eq!(
            escape_fit("<!channel> & <@U1|x>", 100, Lines::Join),
            "&lt;!channel&gt; &amp; &lt;@U1|x&gt;"
        );
        assert_eq!(escape_fit("a\nb\tc", 10, Lines::Join), "a b c");
        assert_eq!(escape_fit("a\nb\tc", 10, Lines::Keep), "a\nb c");
        // Exactly at the limit: not cut.
        assert_eq!(escape_fit("abc", 3, Lines::Join), "abc");
        assert_eq!(escape_fit("abcd", 3, Lines::Join), "ab…");
        // An entity is never split: "a&" escaped is 6 characters.
        assert_eq!(escape_fit("a&b", 5, Lines::Join), "a…");
        let long = "é&".repeat(5000);
        let cut = escape_fit(&long, MAX_SECTION_TEXT, Lines::Join);
        // Whole entities only, so the cut may end a few characters short.
        let n = cut.chars().count();
        assert!(
            (MAX_SECTION_TEXT - 5..=MAX_SECTION_TEXT).contains(&n),
            "{n}"
        );
        assert!(cut.ends_with('…'));
        assert_eq!(
            plain_fit("x".repeat(200).as_str(), 150).chars().count(),
            150
        );
        assert_eq!(plain_fit("a\nb", 150), "a b");
    }

    fn deployment_details() -> Value {
        json!({
            "schema_version": 1,
            "certificate": {
                "id": "c0ffee", "name": "web-prod",
                "dns_names": ["www.example.com", "example.com"],
                "owner": "team-web", "issuer_id": "i1", "issuer": "letsencrypt",
                "serial": "04a1", "not_after": "2027-03-01T12:00:00Z"
            },
            "target": {"id": "t1", "name": "edge-nginx", "plugin": "nginx", "agent_id": "a1"},
            "agent": {"id": "a1", "name": "edge-1", "last_heartbeat_at": "2026-12-02T08:00:00Z"},
            "job": {"id": "j1", "type": "deploy", "attempts": 3},
            "reason": "action nginx-test exited with status 1: <bad> & worse",
            "alerts": [{"key": "deployment:c0ffee:t1", "state": "triggered"}]
        })
    }

    #[test]
    fn message_shape() {
        let s = settings(r#"{"mention":"<!channel>"}"#);
        let m = message(
            &s,
            &event("deployment.failed", Level::Error, deployment_details()),
        );
        assert_eq!(
            m["text"],
            "<!channel> :red_circle: Deployment failed: web-prod deployment to edge-nginx failed"
        );
        let b = blocks(&m);
        assert_eq!(b[0]["type"], "header");
        assert_eq!(b[0]["text"]["type"], "plain_text");
        assert_eq!(b[0]["text"]["text"], ":red_circle: Deployment failed");
        assert_eq!(
            b[1]["text"]["text"],
            "<!channel> web-prod deployment to edge-nginx failed"
        );
        let fields: Vec<&str> = b[2]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["text"].as_str().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "*Certificate*\nweb-prod",
                "*DNS names*\n`www.example.com`, `example.com`",
                "*Not after*\n2027-03-01T12:00:00Z",
                "*Target*\nedge-nginx (nginx)",
                "*Agent*\nedge-1",
                "*Last heartbeat*\n2026-12-02T08:00:00Z",
                "*Job*\ndeploy, 3 attempts",
                "*Issuer*\nletsencrypt",
                "*Owner*\nteam-web",
                "*Serial*\n04a1",
            ]
        );
        assert_eq!(
            b[3]["text"]["text"],
            "*Reason*\naction nginx-test exited with status 1: &lt;bad&gt; &amp; worse"
        );
        assert_eq!(b[4]["type"], "context");
        assert_eq!(
            b[4]["elements"][0]["text"],
            "`deployment.failed` · certificate/c0ffee · id `n-1` · \
             <!date^1649367553^{date_short_pretty} {time}|2022-04-07T21:39:13Z>"
        );
        assert_eq!(b.len(), 5);
    }

    #[test]
    fn mention_only_for_errors_and_severity_styles() {
        let s = settings(r#"{"mention":"<!here>"}"#);
        for (level, style) in [
            (Level::Warn, ":warning:"),
            (Level::Info, ":large_green_circle:"),
        ] {
            let m = message(&s, &event("agent.retired", level, json!({})));
            assert!(!m.to_string().contains("<!here>"), "{m}");
            assert_eq!(
                blocks(&m)[0]["text"]["text"],
                format!("{style} Agent retired")
            );
        }
    }

    #[test]
    fn more_than_ten_facts_are_cut_to_ten() {
        let mut d = deployment_details();
        d["expiring"] = json!({"stage": "7d", "hours_left": 150});
        let m = message(
            &settings("{}"),
            &event("certificate.expiring", Level::Warn, d),
        );
        let fields = blocks(&m)[2]["fields"].as_array().unwrap();
        assert_eq!(fields.len(), MAX_FIELDS);
        assert_eq!(
            fields[3]["text"],
            "*Expiry warning*\n7d stage, 150 hours left"
        );
    }

    #[test]
    fn huge_data_stays_within_slack_limits() {
        let names: Vec<String> = (0..2000).map(|i| format!("host-{i}.example.com")).collect();
        let details = json!({
            "certificate": {"name": "n".repeat(5000), "dns_names": names},
            "reason": "<&>".repeat(5000),
        });
        let mut e = event(&"k".repeat(500), Level::Error, details);
        e.summary = "s&".repeat(5000);
        let m = message(&settings(r#"{"mention":"<!channel>"}"#), &e);
        let b = blocks(&m);
        let chars = |v: &Value| v.as_str().unwrap().chars().count();
        assert!(chars(&b[0]["text"]["text"]) <= MAX_HEADER_TEXT);
        let within = |n: usize| (MAX_SECTION_TEXT - 5..=MAX_SECTION_TEXT).contains(&n);
        assert!(within(chars(&b[1]["text"]["text"])));
        assert!(
            b[1]["text"]["text"]
                .as_str()
                .unwrap()
                .starts_with("<!channel> ")
        );
        for f in b[2]["fields"].as_array().unwrap() {
            assert!(chars(&f["text"]) <= MAX_FIELD_TEXT);
        }
        assert!(within(chars(&b[3]["text"]["text"])));
        assert!(chars(&m["text"]) <= MAX_FALLBACK_TEXT);
        // Cuts never leave half an entity behind.
        for text in [&b[1]["text"]["text"], &b[3]["text"]["text"]] {
            let t = text.as_str().unwrap().trim_end_matches('…');
            assert!(
                !t.ends_with("&am") && !t.ends_with("&l") && !t.ends_with('&'),
                "{t}"
            );
        }
    }

    #[test]
    fn details_that_are_not_an_object_are_shown_escaped() {
        let mut e = event("job.failed", Level::Error, json!({}));
        e.details = "free <form> text".into();
        let m = message(&settings("{}"), &e);
        let b = blocks(&m);
        assert_eq!(b[2]["text"]["text"], "*Details*\nfree &lt;form&gt; text");
        e.details = String::new();
        assert_eq!(blocks(&message(&settings("{}"), &e)).len(), 3);
    }

    #[test]
    fn unknown_kinds_get_a_plain_title() {
        assert_eq!(title("certificate.revoked"), "Event certificate.revoked");
        assert_eq!(title("<!channel>"), "Event channel");
        assert_eq!(title(""), "Event");
    }

    #[test]
    fn status_outcomes() {
        let r = "POST https://hooks.slack.com";
        assert!(outcome(r, 200, None, b"ok").is_ok());
        assert!(outcome(r, 204, None, b"").is_ok());
        let e = outcome(r, 400, None, b"invalid_payload").unwrap_err();
        assert_eq!(e.kind(), "rejected");
        assert_eq!(
            e.message(),
            "POST https://hooks.slack.com: HTTP 400: invalid_payload; Slack refused this message"
        );
        for (status, code) in [
            (403, "action_prohibited"),
            (404, "channel_not_found"),
            (410, "channel_is_archived"),
            (404, "no_service"),
        ] {
            let e = outcome(r, status, None, code.as_bytes()).unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{status} {code}");
            assert!(e.message().contains(code), "{}", e.message());
        }
        assert_eq!(
            outcome(r, 403, None, b"invalid_token").unwrap_err().kind(),
            "unauthorized"
        );
        assert_eq!(
            outcome(r, 401, None, b"").unwrap_err().kind(),
            "unauthorized"
        );
        assert_eq!(
            outcome(r, 302, None, b"").unwrap_err().kind(),
            "invalid-config"
        );
        match outcome(r, 429, Some(30), b"rate_limited").unwrap_err() {
            ConnectorError::RateLimited(l) => assert_eq!(l.retry_after_secs, Some(30)),
            other => panic!("{other:?}"),
        }
        for status in [408, 500, 502, 503, 504] {
            assert_eq!(
                outcome(r, status, Some(5), b"").unwrap_err().kind(),
                "transient",
                "{status}"
            );
        }
        assert_eq!(outcome(r, 413, None, b"").unwrap_err().kind(), "rejected");
        let e = outcome(r, 400, None, b"bad\npayload").unwrap_err();
        assert!(
            e.message().contains("HTTP 400: bad payload"),
            "{}",
            e.message()
        );
    }
}
