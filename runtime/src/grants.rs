//! Capability grants and the checks made against them: which HTTP
//! destinations an instance may reach (before and after DNS resolution) and
//! which directories it sees.
//!
//! All capability decisions live in this file so they can be reviewed in one
//! place.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::IpNet;

use crate::error::ConfigError;

/// URL scheme of a host grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantScheme {
    /// Plain HTTP (only sensible for loopback/agent-local APIs).
    Http,
    /// HTTPS.
    Https,
}

impl GrantScheme {
    fn default_port(self) -> u16 {
        match self {
            GrantScheme::Http => 80,
            GrantScheme::Https => 443,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            GrantScheme::Http => "http",
            GrantScheme::Https => "https",
        }
    }
}

/// The host part of a grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this DNS name (lower-case, no trailing dot).
    Name(String),
    /// Any name strictly below this suffix: `*.example.com` matches
    /// `a.example.com` and `a.b.example.com`, not `example.com`.
    Subdomains(String),
    /// Exactly this IP address. Naming an address explicitly is what allows
    /// loopback and private destinations.
    Ip(IpAddr),
}

/// One allowed outgoing HTTP destination: `scheme://host[:port]`.
///
/// Syntax: `https://api.example.com`, `https://*.digicert.com`,
/// `http://127.0.0.1:2019`, `https://[::1]:8443`. A missing port means the
/// scheme's default port; `:*` allows any port. Paths are not part of a grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostGrant {
    /// Scheme the request must use.
    pub scheme: GrantScheme,
    /// Host the request must address.
    pub host: HostPattern,
    /// Port the request must use; `None` = any port.
    pub port: Option<u16>,
}

impl HostGrant {
    /// Whether a request to `scheme://host:port` is covered by this grant
    /// (before resolution). `host` must already be lower-case.
    pub fn matches(&self, scheme: GrantScheme, host: &str, port: u16) -> bool {
        if scheme != self.scheme || self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host.trim_end_matches('.');
        match &self.host {
            HostPattern::Name(name) => name == host,
            HostPattern::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
            HostPattern::Ip(ip) => parse_ip_host(host).is_some_and(|h| h == *ip),
        }
    }

    /// Whether this grant explicitly names a loopback destination, which
    /// then may resolve to loopback addresses (`localhost`).
    fn names_loopback(&self) -> bool {
        matches!(&self.host, HostPattern::Name(n) if n == "localhost")
    }
}

impl fmt::Display for HostGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        match &self.host {
            HostPattern::Name(n) => f.write_str(n)?,
            HostPattern::Subdomains(s) => write!(f, "*.{s}")?,
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            HostPattern::Ip(ip) => write!(f, "{ip}")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => f.write_str(":*"),
        }
    }
}

impl FromStr for HostGrant {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ConfigError::HostGrant {
            grant: s.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| err("expected scheme://host[:port]"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "https" => GrantScheme::Https,
            "http" => GrantScheme::Http,
            _ => return Err(err("scheme must be http or https")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('@') || rest.contains('?') {
            return Err(err(
                "a grant names scheme, host and port only (no path or user)",
            ));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| err("malformed host or port"))?;
        let port = match port {
            None => Some(scheme.default_port()),
            Some("*") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| err("port must be 1-65535 or *"))?,
            ),
        };
        if port == Some(0) {
            return Err(err("port must be 1-65535 or *"));
        }
        let host = host.to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        let pattern = if let Some(ip) = parse_ip_host(host) {
            HostPattern::Ip(ip)
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !valid_dns_name(suffix) || !suffix.contains('.') {
                return Err(err(
                    "wildcards need a registrable suffix, e.g. *.example.com",
                ));
            }
            HostPattern::Subdomains(suffix.to_string())
        } else if valid_dns_name(host) {
            HostPattern::Name(host.to_string())
        } else {
            return Err(err("host is not a valid DNS name or IP address"));
        };
        Ok(HostGrant {
            scheme,
            host: pattern,
            port,
        })
    }
}

/// Splits `host[:port]`, handling bracketed IPv6 literals.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?))),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

/// Parses an IP literal as it appears in a URL host (IPv6 may be bracketed).
fn parse_ip_host(host: &str) -> Option<IpAddr> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Address ranges a granted *name* may not resolve to: loopback, private,
/// link-local (cloud metadata lives at 169.254.169.254), CGNAT, unique-local,
/// multicast, unspecified and the like. A grant that names such an address
/// literally is exempt.
const NON_PUBLIC: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// Whether `ip` is in a range that only an explicit grant may reach.
pub fn is_non_public(ip: IpAddr) -> bool {
    // IPv4-mapped and -compatible IPv6 addresses are judged as the IPv4
    // address they carry, so `::ffff:127.0.0.1` cannot sneak past.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    NON_PUBLIC.iter().any(|net| {
        net.parse::<IpNet>()
            .map(|n| n.contains(&ip))
            .unwrap_or(false)
    })
}

/// The outcome of checking one request against the grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Allowed; connect to this literal address (no resolution needed).
    Literal(IpAddr),
    /// Allowed so far; resolve the name and check each address with
    /// [`HostGrants::check_resolved`].
    Name {
        /// The name to resolve.
        host: String,
        /// Whether the grant allows loopback results (`localhost`).
        loopback_ok: bool,
    },
}

/// The set of HTTP destinations an instance may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostGrants {
    grants: Vec<HostGrant>,
}

impl HostGrants {
    /// Builds the set from grant strings.
    pub fn parse<S: AsRef<str>>(grants: &[S]) -> Result<Self, ConfigError> {
        Ok(HostGrants {
            grants: grants
                .iter()
                .map(|g| g.as_ref().parse())
                .collect::<Result<_, _>>()?,
        })
    }

    /// The grants.
    pub fn iter(&self) -> impl Iterator<Item = &HostGrant> {
        self.grants.iter()
    }

    /// Checks a request's scheme, host and port. Returns where to connect,
    /// or the reason for refusing.
    pub fn check(&self, scheme: &str, host: &str, port: u16) -> Result<Destination, String> {
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "https" => GrantScheme::Https,
            "http" => GrantScheme::Http,
            other => return Err(format!("scheme {other:?} is never allowed")),
        };
        let host = host.to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        let grant = self
            .grants
            .iter()
            .find(|g| g.matches(scheme, host, port))
            .ok_or_else(|| "destination not granted to this plugin instance".to_string())?;
        match parse_ip_host(host) {
            Some(ip) => Ok(Destination::Literal(ip)),
            None => Ok(Destination::Name {
                host: host.to_string(),
                loopback_ok: grant.names_loopback(),
            }),
        }
    }

    /// Checks one resolved address of a granted name.
    pub fn check_resolved(ip: IpAddr, loopback_ok: bool) -> Result<(), String> {
        if loopback_ok && ip.is_loopback() {
            return Ok(());
        }
        if is_non_public(ip) {
            return Err(format!(
                "resolves to non-public address {ip}; grant the address explicitly to allow it"
            ));
        }
        Ok(())
    }
}

/// One directory made visible to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// Directory on this machine.
    pub host_path: PathBuf,
    /// Path the guest sees it at (e.g. `/certs`).
    pub guest_path: String,
    /// Whether the guest may create, change and delete files in it.
    pub writable: bool,
    /// The path the directory is known by on this machine when `host_path`
    /// is a held handle (`/proc/self/fd/N`, as the agent grants them):
    /// what `context.host-path` answers, so a connector writes a path the
    /// web server can open into its configuration.
    pub known_as: Option<PathBuf>,
}

impl DirGrant {
    /// Checks the grant is usable: an existing directory and an absolute
    /// guest path without `..`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |reason: &str| ConfigError::Directory {
            path: self.host_path.clone(),
            reason: reason.to_string(),
        };
        if !Path::new(&self.guest_path).is_absolute() || self.guest_path.contains("..") {
            return Err(err("guest path must be absolute and must not contain '..'"));
        }
        match std::fs::metadata(&self.host_path) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(err("not a directory")),
            Err(e) => Err(err(&e.to_string())),
        }
    }
}

/// Everything an operator granted one plugin instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Allowed HTTP destinations.
    pub hosts: HostGrants,
    /// Preopened directories.
    pub directories: Vec<DirGrant>,
    /// Named actions (targets only), by name, as the operator defined them.
    pub actions: std::collections::BTreeMap<String, crate::actions::ActionSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(list: &[&str]) -> HostGrants {
        HostGrants::parse(list).unwrap()
    }

    #[test]
    fn parses_and_displays_grants() {
        for (input, shown) in [
            ("https://api.example.com", "https://api.example.com:443"),
            ("https://*.digicert.com", "https://*.digicert.com:443"),
            ("http://127.0.0.1:2019", "http://127.0.0.1:2019"),
            ("https://[::1]:8443", "https://[::1]:8443"),
            ("https://Example.COM:*", "https://example.com:*"),
            ("http://localhost:8080/", "http://localhost:8080"),
        ] {
            assert_eq!(input.parse::<HostGrant>().unwrap().to_string(), shown);
        }
    }

    #[test]
    fn refuses_malformed_grants() {
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://example.com/path",
            "https://user@example.com",
            "https://*.com",
            "https://exa mple.com",
            "https://example.com:0",
            "https://example.com:99999",
            "https://-bad-.com",
        ] {
            assert!(bad.parse::<HostGrant>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn matching_respects_scheme_host_port_and_wildcards() {
        let g = grants(&[
            "https://*.example.com",
            "http://127.0.0.1:2019",
            "https://api.test:*",
        ]);
        assert!(g.check("https", "a.example.com", 443).is_ok());
        assert!(g.check("https", "a.b.example.com", 443).is_ok());
        assert!(g.check("HTTPS", "A.Example.Com.", 443).is_ok());
        assert!(g.check("https", "example.com", 443).is_err());
        assert!(g.check("https", "badexample.com", 443).is_err());
        assert!(g.check("https", "a.example.com", 8443).is_err());
        assert!(g.check("http", "a.example.com", 443).is_err());
        assert_eq!(
            g.check("http", "127.0.0.1", 2019),
            Ok(Destination::Literal("127.0.0.1".parse().unwrap()))
        );
        assert!(g.check("http", "127.0.0.1", 2020).is_err());
        assert!(g.check("https", "api.test", 1).is_ok());
        assert!(g.check("https", "api.test", 65535).is_ok());
        assert!(g.check("file", "api.test", 1).is_err());
    }

    #[test]
    fn granted_names_may_not_resolve_to_private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(HostGrants::check_resolved(ip, false).is_err(), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "8.8.8.8",
        ] {
            assert!(
                HostGrants::check_resolved(ip.parse().unwrap(), false).is_ok(),
                "{ip}"
            );
        }
        // `localhost` granted by name may resolve to loopback, nothing else.
        assert!(HostGrants::check_resolved("127.0.0.1".parse().unwrap(), true).is_ok());
        assert!(HostGrants::check_resolved("10.0.0.1".parse().unwrap(), true).is_err());
        let g = grants(&["http://localhost:8080"]);
        assert_eq!(
            g.check("http", "localhost", 8080),
            Ok(Destination::Name {
                host: "localhost".into(),
                loopback_ok: true
            })
        );
    }

    #[test]
    fn directory_grants_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let ok = DirGrant {
            host_path: dir.path().to_path_buf(),
            guest_path: "/certs".into(),
            writable: true,
            known_as: None,
        };
        assert!(ok.validate().is_ok());
        let relative = DirGrant {
            guest_path: "certs".into(),
            ..ok.clone()
        };
        assert!(relative.validate().is_err());
        let escape = DirGrant {
            guest_path: "/certs/../etc".into(),
            ..ok.clone()
        };
        assert!(escape.validate().is_err());
        let missing = DirGrant {
            host_path: dir.path().join("nope"),
            ..ok
        };
        assert!(missing.validate().is_err());
    }
}
