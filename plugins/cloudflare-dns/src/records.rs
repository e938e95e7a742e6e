//! What a TXT record request may hold, and which Cloudflare records match
//! it. Pure functions, unit-tested natively.

use certplane_sdk::ConnectorError;
use serde::Deserialize;

/// Cloudflare's limit on a TXT record's `content`.
pub const MAX_CONTENT_LEN: usize = 2048;

/// One DNS record as Cloudflare lists it (fields this connector reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DnsRecord {
    /// Cloudflare's record id.
    pub id: String,
    /// `TXT`, `A`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Fully qualified name, no trailing dot.
    pub name: String,
    /// The record's content; a TXT value may come back in double quotes.
    pub content: String,
}

/// A checked request: lower-case names without trailing dots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The zone apex.
    pub zone: String,
    /// The record's name, inside `zone`.
    pub name: String,
    /// The TXT value as given.
    pub value: String,
}

fn dns_name(s: &str) -> String {
    s.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Checks a record the host asks for.
///
/// A name outside the zone is `invalid-config`: the operator routed the
/// name to the instance of another zone, and creating it would put it at
/// the wrong place (Cloudflare appends the zone to names it does not end
/// with). A value Cloudflare cannot store is `rejected`.
pub fn check(zone: &str, name: &str, value: &str) -> Result<Wanted, ConnectorError> {
    let zone = dns_name(zone);
    let name = dns_name(name);
    if zone.is_empty() || name.is_empty() {
        return Err(ConnectorError::invalid_config(format!(
            "TXT record {name:?} in zone {zone:?}: the zone and the name must not be empty"
        )));
    }
    if name != zone && !name.ends_with(&format!(".{zone}")) {
        return Err(ConnectorError::invalid_config(format!(
            "TXT record name {name:?} is not inside zone {zone:?} this instance serves: route \
             the name to the instance of its own zone"
        )));
    }
    if value.is_empty() {
        return Err(ConnectorError::rejected(format!(
            "TXT record {name}: the value is empty"
        )));
    }
    if value.len() > MAX_CONTENT_LEN {
        return Err(ConnectorError::rejected(format!(
            "TXT record {name}: the value is {} bytes, Cloudflare stores at most {MAX_CONTENT_LEN}",
            value.len()
        )));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ConnectorError::rejected(format!(
            "TXT record {name}: the value holds characters other than printable ASCII"
        )));
    }
    Ok(Wanted {
        zone,
        name,
        value: value.to_string(),
    })
}

/// The value a TXT `content` stands for: Cloudflare may return it wrapped
/// in double quotes, or as several quoted strings (`"ab" "cd"` is `abcd`,
/// RFC 1035 character-strings); anything else is taken as is.
pub fn unquote(content: &str) -> String {
    let t = content.trim();
    if !t.starts_with('"') {
        return t.to_string();
    }
    let mut out = String::new();
    let mut chars = t.chars();
    loop {
        match chars.next() {
            None => return out,
            Some(c) if c.is_ascii_whitespace() => continue,
            Some('"') => {}
            // Not a list of quoted strings after all: keep the text.
            Some(_) => return t.to_string(),
        }
        loop {
            match chars.next() {
                None => return t.to_string(),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(c) => out.push(c),
                    None => return t.to_string(),
                },
                Some(c) => out.push(c),
            }
        }
    }
}

/// Whether `record` is the TXT record `wanted` names, value included.
pub fn matches(record: &DnsRecord, wanted: &Wanted) -> bool {
    record.kind.eq_ignore_ascii_case("TXT")
        && dns_name(&record.name) == wanted.name
        && unquote(&record.content) == wanted.value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: &str, name: &str, content: &str) -> DnsRecord {
        DnsRecord {
            id: "r1".into(),
            kind: kind.into(),
            name: name.into(),
            content: content.into(),
        }
    }

    #[test]
    fn names_must_lie_in_the_zone() {
        let w = check("Example.COM.", "_acme-challenge.WWW.example.com.", "v").unwrap();
        assert_eq!(w.zone, "example.com");
        assert_eq!(w.name, "_acme-challenge.www.example.com");
        assert!(check("example.com", "example.com", "v").is_ok());
        for name in ["_acme-challenge.example.org", "badexample.com", "com"] {
            let e = check("example.com", name, "v").unwrap_err();
            assert_eq!(e.kind(), "invalid-config", "{name}");
            assert!(e.message().contains("not inside zone"), "{}", e.message());
        }
        assert_eq!(check("", "x", "v").unwrap_err().kind(), "invalid-config");
    }

    #[test]
    fn values_cloudflare_cannot_store_are_rejected() {
        for value in [String::new(), "x".repeat(2049), "a\nb".into(), "é".into()] {
            let e = check("example.com", "a.example.com", &value).unwrap_err();
            assert_eq!(e.kind(), "rejected", "{value:?}");
        }
        assert!(check("example.com", "a.example.com", &"x".repeat(2048)).is_ok());
    }

    #[test]
    fn quoted_content_is_unwrapped() {
        assert_eq!(unquote("abc"), "abc");
        assert_eq!(unquote("\"abc\""), "abc");
        assert_eq!(unquote(" \"ab\" \"cd\" "), "abcd");
        assert_eq!(unquote(r#""a\"b""#), "a\"b");
        // Unbalanced or mixed: left as it is.
        assert_eq!(unquote("\"abc"), "\"abc");
        assert_eq!(unquote("\"ab\" cd"), "\"ab\" cd");
    }

    #[test]
    fn matching_checks_type_name_and_value() {
        let w = check("example.com", "_acme-challenge.example.com", "tok-1").unwrap();
        assert!(matches(
            &rec("TXT", "_acme-challenge.example.com", "tok-1"),
            &w
        ));
        assert!(matches(
            &rec("txt", "_ACME-challenge.example.com.", "\"tok-1\""),
            &w
        ));
        assert!(!matches(
            &rec("TXT", "_acme-challenge.example.com", "tok-2"),
            &w
        ));
        assert!(!matches(
            &rec("CNAME", "_acme-challenge.example.com", "tok-1"),
            &w
        ));
        assert!(!matches(&rec("TXT", "x.example.com", "tok-1"), &w));
    }
}
