//! Validation of the names a certificate request asks for.

use core::net::IpAddr;

/// Checks that `name` is a valid DNS name for a certificate and returns it
/// lower-cased.
///
/// Accepted: ASCII letters, digits and hyphens in labels of 1..=63 characters
/// that neither start nor end with a hyphen, at most 253 characters in all,
/// and optionally `*` as the whole left-most label followed by at least two
/// more labels (`*.example.com`, not `*.com`). Internationalized names must
/// be given in their ASCII (`xn--`) form. A trailing dot, empty labels,
/// underscores, spaces and IP addresses are refused.
pub fn dns_name(name: &str) -> Result<String, String> {
    let refuse = |why: &str| Err(format!("{name:?} is not a valid DNS name: {why}"));
    if name.is_empty() {
        return refuse("it is empty");
    }
    if !name.is_ascii() {
        return refuse("use the ASCII (xn--) form of internationalized names");
    }
    if name.len() > 253 {
        return refuse("longer than 253 characters");
    }
    if name.ends_with('.') {
        return refuse("remove the trailing dot");
    }
    if name.parse::<IpAddr>().is_ok() {
        return refuse("it is an IP address; request it as an ip-address instead");
    }
    let labels: Vec<&str> = name.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if *label == "*" {
            if i != 0 {
                return refuse("a wildcard is only allowed as the whole left-most label");
            }
            if labels.len() < 3 {
                return refuse("a wildcard needs at least two labels after it");
            }
            continue;
        }
        if label.is_empty() {
            return refuse("it has an empty label");
        }
        if label.len() > 63 {
            return refuse("a label is longer than 63 characters");
        }
        if label.contains('*') {
            return refuse("a wildcard is only allowed as the whole left-most label");
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return refuse(&format!("character {c:?} is not allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return refuse("a label starts or ends with a hyphen");
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return refuse("the last label is all digits");
    }
    Ok(name.to_ascii_lowercase())
}

/// Parses an IP address in textual form (IPv4 dotted quad or IPv6) into the
/// octets a certificate's `iPAddress` name holds (4 or 16 bytes).
pub fn ip_address(text: &str) -> Result<Vec<u8>, String> {
    match text.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => Ok(v4.octets().to_vec()),
        Ok(IpAddr::V6(v6)) => Ok(v6.octets().to_vec()),
        Err(_) => Err(format!("{text:?} is not a valid IP address")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "example.com",
            "www.example.com",
            "localhost",
            "a-b.c-d.example",
            "xn--bcher-kva.example",
            "*.example.com",
            "123.example.com",
        ] {
            assert!(dns_name(ok).is_ok(), "{ok}");
        }
        assert_eq!(dns_name("WWW.Example.COM").unwrap(), "www.example.com");
    }

    #[test]
    fn refuses_bad_names() {
        let long_label = format!("{}.example.com", "a".repeat(64));
        let long_name = format!("{}.com", "abcdefghi.".repeat(26));
        for bad in [
            "",
            "example.com.",
            "exa mple.com",
            "under_score.example.com",
            "-lead.example.com",
            "trail-.example.com",
            "a..b",
            ".example.com",
            "*.com",
            "www.*.example.com",
            "w*.example.com",
            "bücher.example",
            "10.0.0.1",
            "::1",
            "example.123",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(dns_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            dns_name("a_b.example").unwrap_err(),
            "\"a_b.example\" is not a valid DNS name: character '_' is not allowed"
        );
    }

    #[test]
    fn ip_addresses() {
        assert_eq!(ip_address("192.0.2.7").unwrap(), vec![192, 0, 2, 7]);
        assert_eq!(ip_address("::1").unwrap().len(), 16);
        assert!(ip_address("300.1.1.1").is_err());
        assert!(ip_address("example.com").is_err());
    }
}
