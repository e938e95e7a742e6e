//! `pebble-challtestsrv` for tests: a mock DNS server whose TXT records are
//! set over a small management API, and a TXT lookup to read them back.
//!
//! [`Challtestsrv::start`] runs the binary (Debian package `pebble`) with
//! its DNS server on free loopback ports (UDP and TCP) and its management
//! API on another; the HTTP-01, HTTPS-01 and TLS-ALPN-01 servers are off.
//! The process is killed when the value is dropped. [`ChalltestsrvMgmt`] is
//! the management client (`POST /set-txt`, `POST /clear-txt`; `clear-txt`
//! removes every value of a host). [`txt_lookup`] asks a DNS server for a
//! name's TXT records with one UDP query, as a resolver would (the few
//! lines of RFC 1035 it needs, so no DNS library is required).
//!
//! ```no_run
//! use certplane_testkit::challtestsrv::{Challtestsrv, txt_lookup};
//! # async fn t() {
//! let dns = Challtestsrv::start();
//! dns.mgmt().set_txt("_acme-challenge.example.test", "token").await.unwrap();
//! let values = txt_lookup(dns.dns_addr(), "_acme-challenge.example.test").unwrap();
//! assert_eq!(values, ["token"]);
//! # }
//! ```

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The binary, from Debian's `pebble` package.
pub const BINARY: &str = "pebble-challtestsrv";

/// How long [`Challtestsrv::start`] waits for the management API.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`txt_lookup`] waits for an answer.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// The management API of a running `pebble-challtestsrv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChalltestsrvMgmt {
    addr: SocketAddr,
}

impl ChalltestsrvMgmt {
    /// The management API listening at `addr` (plain HTTP).
    pub fn new(addr: SocketAddr) -> Self {
        ChalltestsrvMgmt { addr }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds `value` to the TXT values of `host` (a trailing dot is added
    /// when missing: the server keys hosts by their absolute name).
    pub async fn set_txt(&self, host: &str, value: &str) -> io::Result<()> {
        let body = serde_json::json!({"host": absolute(host), "value": value});
        self.post("/set-txt", &body).await
    }

    /// Removes every TXT value of `host`.
    pub async fn clear_txt(&self, host: &str) -> io::Result<()> {
        let body = serde_json::json!({"host": absolute(host)});
        self.post("/clear-txt", &body).await
    }

    /// One `POST` with a JSON body on a fresh connection; fails unless the
    /// answer is 2xx. Plain HTTP/1.1 with `Connection: close` is all this
    /// API needs, which keeps an HTTP client out of the test kit.
    async fn post(&self, path: &str, body: &serde_json::Value) -> io::Result<()> {
        let body = body.to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            io::Result::Ok(answer)
        };
        let answer = tokio::time::timeout(LOOKUP_TIMEOUT, exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("POST {path}")))??;
        let answer = String::from_utf8_lossy(&answer);
        let status = answer.split_whitespace().nth(1).unwrap_or("");
        if status.starts_with('2') {
            Ok(())
        } else {
            let line = answer.lines().next().unwrap_or("(no answer)");
            Err(io::Error::other(format!(
                "challtestsrv POST {path}: {line}"
            )))
        }
    }
}

fn absolute(host: &str) -> String {
    format!("{}.", host.trim_end_matches('.'))
}

/// A running `pebble-challtestsrv`, killed on drop.
pub struct Challtestsrv {
    child: Child,
    dns: SocketAddr,
    mgmt: ChalltestsrvMgmt,
    log: tempfile::NamedTempFile,
}

impl Challtestsrv {
    /// Starts the server on free loopback ports and waits until its
    /// management API answers. Panics with the server's output when it does
    /// not start (tests only; the `pebble` package must be installed).
    pub fn start() -> Challtestsrv {
        let mut last = String::new();
        // A free port can be taken between probing and binding: retry.
        for _ in 0..3 {
            match Challtestsrv::try_start() {
                Ok(srv) => return srv,
                Err(e) => last = e.to_string(),
            }
        }
        panic!("{BINARY} does not start: {last}");
    }

    fn try_start() -> io::Result<Challtestsrv> {
        let mut ports = crate::ports::PortReservation::default();
        let dns = ports.udp_and_tcp();
        let mgmt = ports.tcp();
        drop(ports);
        let log = tempfile::NamedTempFile::new()?;
        let child = Command::new(BINARY)
            .args(["-dns01", &dns.to_string()])
            .args(["-management", &mgmt.to_string()])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .stdin(Stdio::null())
            .stdout(log.reopen()?)
            .stderr(log.reopen()?)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {BINARY}: {e}")))?;
        let mut srv = Challtestsrv {
            child,
            dns,
            mgmt: ChalltestsrvMgmt::new(mgmt),
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = srv.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "{BINARY} exited ({status}): {}",
                    srv.output()
                )));
            }
            if TcpStream::connect_timeout(&mgmt, Duration::from_millis(200)).is_ok()
                && TcpStream::connect_timeout(&dns, Duration::from_millis(200)).is_ok()
            {
                return Ok(srv);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{BINARY} did not listen within {START_TIMEOUT:?}: {}",
                    srv.output()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The DNS server (UDP and TCP), e.g. for Pebble's `-dnsserver`.
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns
    }

    /// The management API.
    pub fn mgmt(&self) -> ChalltestsrvMgmt {
        self.mgmt.clone()
    }

    /// What the server printed so far (for failure messages).
    pub fn output(&self) -> String {
        let mut out = String::new();
        if let Ok(mut f) = self.log.reopen() {
            let _ = f.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for Challtestsrv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TXT values of `name` as the DNS server at `server` answers them
/// (one UDP query, recursion desired; each record's character-strings
/// joined). An empty list for NXDOMAIN or no TXT records. Blocks for at
/// most a few seconds.
pub fn txt_lookup(server: SocketAddr, name: &str) -> io::Result<Vec<String>> {
    let id: u16 = rand::random();
    let query = dns::txt_query(id, name)?;
    let socket = UdpSocket::bind(if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    })?;
    socket.set_read_timeout(Some(LOOKUP_TIMEOUT))?;
    socket.connect(server)?;
    socket.send(&query)?;
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.recv(&mut buf)?;
        // A stray datagram (an earlier query's late answer): keep waiting.
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            return dns::txt_answers(id, &buf[..n]);
        }
    }
}

/// Just enough of RFC 1035 for one TXT question and its answers.
mod dns {
    use std::io;

    const TYPE_TXT: u16 = 16;
    const CLASS_IN: u16 = 1;
    const RCODE_NXDOMAIN: u16 = 3;

    fn bad(why: impl Into<String>) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, why.into())
    }

    /// Header (id, RD set, one question) + QNAME + QTYPE TXT + QCLASS IN.
    pub fn txt_query(id: u16, name: &str) -> io::Result<Vec<u8>> {
        let mut q = Vec::with_capacity(32 + name.len());
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&0x0100u16.to_be_bytes());
        q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.trim_end_matches('.').split('.') {
            if label.is_empty() || label.len() > 63 || !label.is_ascii() {
                return Err(bad(format!("{name:?} is not a DNS name")));
            }
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&TYPE_TXT.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        Ok(q)
    }

    fn u16_at(msg: &[u8], at: usize) -> io::Result<u16> {
        msg.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| bad("truncated DNS message"))
    }

    /// The offset just past the (possibly compressed) name at `at`.
    fn skip_name(msg: &[u8], mut at: usize) -> io::Result<usize> {
        loop {
            let len = *msg.get(at).ok_or_else(|| bad("truncated name"))?;
            match len {
                0 => return Ok(at + 1),
                // A compression pointer ends the name in this position.
                l if l & 0xC0 == 0xC0 => return Ok(at + 2),
                l => at += 1 + usize::from(l),
            }
        }
    }

    /// The TXT answers of a response to the query with `id`.
    pub fn txt_answers(id: u16, msg: &[u8]) -> io::Result<Vec<String>> {
        if u16_at(msg, 0)? != id {
            return Err(bad("answer to another query"));
        }
        let flags = u16_at(msg, 2)?;
        if flags & 0x8000 == 0 {
            return Err(bad("not a response"));
        }
        if flags & 0x0200 != 0 {
            return Err(bad("truncated response (TC); TCP is not implemented"));
        }
        match flags & 0x000F {
            0 => {}
            RCODE_NXDOMAIN => return Ok(Vec::new()),
            rcode => return Err(bad(format!("DNS error, rcode {rcode}"))),
        }
        let questions = u16_at(msg, 4)?;
        let answers = u16_at(msg, 6)?;
        let mut at = 12;
        for _ in 0..questions {
            at = skip_name(msg, at)? + 4;
        }
        let mut out = Vec::new();
        for _ in 0..answers {
            at = skip_name(msg, at)?;
            let rtype = u16_at(msg, at)?;
            let rdlen = usize::from(u16_at(msg, at + 8)?);
            let start = at + 10;
            let rdata = msg
                .get(start..start + rdlen)
                .ok_or_else(|| bad("truncated record"))?;
            at = start + rdlen;
            if rtype != TYPE_TXT {
                continue;
            }
            let mut value = Vec::new();
            let mut i = 0;
            while i < rdata.len() {
                let n = usize::from(rdata[i]);
                let s = rdata
                    .get(i + 1..i + 1 + n)
                    .ok_or_else(|| bad("truncated TXT string"))?;
                value.extend_from_slice(s);
                i += 1 + n;
            }
            out.push(String::from_utf8_lossy(&value).into_owned());
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn query_and_answer_round_trip() {
            let q = txt_query(0x1234, "_acme-challenge.example.test.").unwrap();
            assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
            assert_eq!(q[12], 15);
            // A response: the question echoed, two TXT answers (the second
            // one's name compressed, split into two strings) and an A.
            let mut r = q.clone();
            r[2] = 0x81;
            r[3] = 0x80;
            r[7] = 3;
            let mut answer = |name: &[u8], rtype: u16, rdata: &[u8]| {
                r.extend_from_slice(name);
                r.extend_from_slice(&rtype.to_be_bytes());
                r.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
                r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                r.extend_from_slice(rdata);
            };
            answer(&q[12..q.len() - 4], TYPE_TXT, b"\x03abc");
            answer(&[0xC0, 12], TYPE_TXT, b"\x02de\x01f");
            answer(&[0xC0, 12], 1, &[127, 0, 0, 1]);
            assert_eq!(txt_answers(0x1234, &r).unwrap(), ["abc", "def"]);
            assert!(txt_answers(0x9999, &r).is_err());
            r[3] = 0x83;
            assert!(txt_answers(0x1234, &r).unwrap().is_empty());
            r[3] = 0x80;
            assert!(txt_answers(0x1234, &r[..20]).is_err());
            assert!(txt_query(1, "a..b").is_err());
        }
    }
}
