//! http-01 challenges this agent serves from the local web server's
//! webroot (an issuer whose `grants.challenges.http_01` is `"agent"`):
//! the work poll hands out tasks; `publish` writes the token file
//! ([`crate::webroot`]), fetches it back through the web server the way
//! the CA will (`GET /.well-known/acme-challenge/<token>` with the name as
//! `Host`, at `[challenges] check_url`) and reports `ready` or `failed`;
//! `withdraw` deletes the file and reports `withdrawn`.
//!
//! Reports are idempotent on the host, and an unreported task is handed out
//! again, so a task interrupted anywhere is simply done again.

use std::net::SocketAddr;
use std::time::Duration;

use certplane_proto::agent::{
    ChallengeAction, ChallengeReport, ChallengeReportState, ChallengeTask,
};
use tokio::time::Instant;

use crate::config::ChallengesConfig;
use crate::hostapi::{HostApi, HostError};
use crate::webroot::{Webroot, WebrootError};

/// Longest answer read from the web server.
const MAX_BODY: usize = 64 * 1024;
/// Limit on one fetch of the token.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// First pause between fetches; doubles up to [`LAST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// Longest pause between fetches.
const LAST_PAUSE: Duration = Duration::from_secs(2);

/// Where the local web server answers plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckUrl {
    host: CheckHost,
    port: u16,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CheckHost {
    Ip(std::net::IpAddr),
    Name(String),
}

impl CheckUrl {
    /// Parses `http://host[:port][/]`; anything else (https, a path, a
    /// query, credentials) is refused with the reason.
    pub fn parse(text: &str) -> Result<CheckUrl, String> {
        let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "{text:?}: only plain http:// is supported (CAs fetch http-01 over plain HTTP)"
            ));
        }
        if !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
            || !matches!(url.path(), "" | "/")
        {
            return Err(format!(
                "{text:?}: give only http://host[:port], without path, query or credentials"
            ));
        }
        let host = match url.host() {
            Some(url::Host::Ipv4(ip)) => CheckHost::Ip(ip.into()),
            Some(url::Host::Ipv6(ip)) => CheckHost::Ip(ip.into()),
            Some(url::Host::Domain(name)) => CheckHost::Name(name.to_string()),
            None => return Err(format!("{text:?} names no host")),
        };
        Ok(CheckUrl {
            host,
            port: url.port_or_known_default().unwrap_or(80),
            text: text.trim_end_matches('/').to_string(),
        })
    }

    async fn addr(&self) -> std::io::Result<SocketAddr> {
        match &self.host {
            CheckHost::Ip(ip) => Ok(SocketAddr::new(*ip, self.port)),
            CheckHost::Name(name) => tokio::net::lookup_host((name.as_str(), self.port))
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other(format!("{name} has no address"))),
        }
    }
}

/// Serves challenge tasks with this agent's `[challenges]` settings.
#[derive(Debug, Clone)]
pub struct Challenges {
    webroot: Option<Webroot>,
    check: Result<CheckUrl, String>,
    check_within: Duration,
}

impl Challenges {
    /// The handler of `config` (checked when the configuration loaded).
    pub fn new(config: &ChallengesConfig) -> Challenges {
        Challenges {
            webroot: config.webroot.clone().map(Webroot::new),
            check: CheckUrl::parse(&config.check_url),
            check_within: Duration::from_secs(config.check_within_secs),
        }
    }

    /// Does one task and says what to report.
    pub async fn perform(&self, task: &ChallengeTask) -> ChallengeReport {
        match task.action {
            ChallengeAction::Publish => self.publish(task).await,
            ChallengeAction::Withdraw => self.withdraw(task).await,
        }
    }

    async fn publish(&self, task: &ChallengeTask) -> ChallengeReport {
        let Some(webroot) = self.webroot.clone() else {
            return failed(
                "this agent has no webroot for http-01 challenges: set `[challenges] webroot` \
                 in its configuration to the directory its web server serves",
            );
        };
        if !valid_name(&task.identifier) {
            return failed(format!("{:?} is not a DNS name", task.identifier));
        }
        let check = match &self.check {
            Ok(check) => check.clone(),
            Err(e) => return failed(format!("`[challenges] check_url`: {e}")),
        };
        let (token, value) = (task.token.clone(), task.key_authorization.clone());
        let written = blocking(move || webroot.write_token(&token, &value)).await;
        let path = match written {
            Ok(path) => path,
            Err(e) => return failed(format!("cannot publish the token: {e}")),
        };
        tracing::info!(job = %task.job_id, challenge = %task.challenge_id,
            identifier = %task.identifier, path = %path.display(), "challenge token written");
        match self.served(&check, task).await {
            Ok(()) => ChallengeReport {
                state: ChallengeReportState::Ready,
                message: None,
            },
            Err(seen) => {
                // Not served: nothing should be left for the CA to find.
                if let Some(webroot) = self.webroot.clone() {
                    let token = task.token.clone();
                    if let Err(e) = blocking(move || webroot.remove_token(&token)).await {
                        tracing::warn!(job = %task.job_id, challenge = %task.challenge_id,
                            error = %e, "cannot remove a token that is not served");
                    }
                }
                failed(format!(
                    "the web server does not serve the token within {} s: {seen}",
                    self.check_within.as_secs()
                ))
            }
        }
    }

    async fn withdraw(&self, task: &ChallengeTask) -> ChallengeReport {
        let Some(webroot) = self.webroot.clone() else {
            return ChallengeReport {
                state: ChallengeReportState::Withdrawn,
                message: Some("this agent has no webroot; nothing to remove".into()),
            };
        };
        let token = task.token.clone();
        let message = match blocking(move || webroot.remove_token(&token)).await {
            Ok(true) => None,
            Ok(false) => Some("the token file was already gone".to_string()),
            // Retrying would not make a file this agent cannot delete go
            // away; the host keeps the message with the challenge.
            Err(e) => {
                tracing::warn!(job = %task.job_id, challenge = %task.challenge_id,
                    error = %e, "a token file could not be removed");
                Some(format!("the token file could not be removed: {e}"))
            }
        };
        ChallengeReport {
            state: ChallengeReportState::Withdrawn,
            message,
        }
    }

    /// Fetches the token through the web server until it answers the key
    /// authorization or `check_within` has passed; the error is the last
    /// observation.
    async fn served(&self, check: &CheckUrl, task: &ChallengeTask) -> Result<(), String> {
        let deadline = Instant::now() + self.check_within;
        let path = format!("/.well-known/acme-challenge/{}", task.token);
        let mut pause = FIRST_PAUSE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let seen = match tokio::time::timeout(
                FETCH_TIMEOUT.min(left),
                fetch(check, &path, &task.identifier),
            )
            .await
            {
                Ok(Ok((200, body))) if body.trim_end() == task.key_authorization => return Ok(()),
                Ok(Ok((200, _))) => "it answered 200 with other content".to_string(),
                Ok(Ok((status, _))) => format!("it answered {status}"),
                Ok(Err(e)) => e,
                Err(_) => "timed out".to_string(),
            };
            let seen = format!(
                "GET {}{path} (Host: {}): {seen}",
                check.text, task.identifier
            );
            tracing::debug!(job = %task.job_id, challenge = %task.challenge_id, %seen,
                "token not served yet");
            if Instant::now() + pause >= deadline {
                return Err(seen);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LAST_PAUSE);
        }
    }
}

/// Does every task and reports it. Returns how many were reported; a
/// report the host refuses (the challenge is no longer this agent's) is
/// logged and skipped; other host errors end the batch for the poll loop.
pub async fn serve(
    api: &HostApi,
    challenges: &Challenges,
    tasks: Vec<ChallengeTask>,
) -> Result<usize, HostError> {
    let mut reported = 0;
    for task in tasks {
        if !path_safe(&task.job_id) || !path_safe(&task.challenge_id) {
            tracing::warn!(job = %task.job_id, challenge = %task.challenge_id,
                "a challenge task with an unusable id; ignored");
            continue;
        }
        let report = challenges.perform(&task).await;
        let level_ok = report.state != ChallengeReportState::Failed;
        if level_ok {
            tracing::info!(job = %task.job_id, challenge = %task.challenge_id,
                identifier = %task.identifier, action = ?task.action, state = report.state.as_str(),
                message = report.message.as_deref().unwrap_or(""), "challenge done");
        } else {
            tracing::warn!(job = %task.job_id, challenge = %task.challenge_id,
                identifier = %task.identifier, action = ?task.action, state = report.state.as_str(),
                message = report.message.as_deref().unwrap_or(""), "challenge failed");
        }
        match api
            .report_challenge(&task.job_id, &task.challenge_id, &report)
            .await
        {
            Ok(accepted) => {
                reported += 1;
                if !accepted.changed {
                    tracing::info!(job = %task.job_id, challenge = %task.challenge_id,
                        state = %accepted.state, "the host had already moved the challenge on");
                }
            }
            Err(HostError::Refused(why)) => {
                tracing::warn!(job = %task.job_id, challenge = %task.challenge_id, %why,
                    "the host refused the challenge report");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(reported)
}

fn failed(message: impl Into<String>) -> ChallengeReport {
    ChallengeReport {
        state: ChallengeReportState::Failed,
        message: Some(message.into()),
    }
}

/// A job or challenge id that can go into a URL path as one segment.
fn path_safe(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A DNS name fit for the `Host` header.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, WebrootError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("file task: {e}")),
    }
}

/// One plain HTTP/1.1 GET with `host` as `Host`: (status, body).
async fn fetch(check: &CheckUrl, path: &str, host: &str) -> Result<(u16, String), String> {
    use http_body_util::BodyExt as _;

    let addr = check
        .addr()
        .await
        .map_err(|e| format!("cannot resolve: {e}"))?;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let connection = tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
    .await;
    connection.abort();
    answer
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::webroot::valid_token;

    /// A web server serving `root` for the name `www.example.test` only
    /// (anything else, or another `Host`, is a 404); returns its URL.
    async fn web_server(root: std::path::PathBuf) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let request = String::from_utf8_lossy(&request).to_string();
                let path = request.split(' ').nth(1).unwrap_or("/").to_string();
                let host_ok = request
                    .lines()
                    .any(|l| l.eq_ignore_ascii_case("host: www.example.test"));
                let file = root.join(path.trim_start_matches('/'));
                let answer = match (host_ok, std::fs::read_to_string(&file)) {
                    (true, Ok(body)) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_string(),
                };
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        url
    }

    #[test]
    fn check_urls_are_plain_http_origins() {
        let url = CheckUrl::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(url.port, 8080);
        assert_eq!(url.text, "http://127.0.0.1:8080");
        assert_eq!(CheckUrl::parse("http://localhost").unwrap().port, 80);
        assert_eq!(
            CheckUrl::parse("http://[::1]:81").unwrap().host,
            CheckHost::Ip("::1".parse().unwrap())
        );
        for bad in [
            "https://127.0.0.1",
            "http://127.0.0.1/sub",
            "http://u:p@127.0.0.1",
            "http://127.0.0.1/?q",
            "127.0.0.1:80",
        ] {
            assert!(CheckUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_and_names_are_checked_before_use() {
        assert!(path_safe("0193a-b_c.d"));
        for bad in ["", ".", "..", "a/b", "a?b", "a b"] {
            assert!(!path_safe(bad), "{bad:?}");
        }
        assert!(valid_name("www.example.com"));
        assert!(!valid_name("www.example.com\r\nX: y"));
        assert!(!valid_name(""));
        assert!(valid_token("abc") && !valid_token("a.b"));
    }

    fn task(action: ChallengeAction, token: &str) -> ChallengeTask {
        ChallengeTask {
            job_id: "j".into(),
            challenge_id: "c".into(),
            identifier: "www.example.test".into(),
            token: token.into(),
            key_authorization: format!("{token}.thumb"),
            action,
        }
    }

    fn config(webroot: Option<&std::path::Path>, check_url: &str) -> ChallengesConfig {
        ChallengesConfig {
            webroot: webroot.map(|p| p.to_path_buf()),
            check_url: check_url.into(),
            check_within_secs: 1,
        }
    }

    #[tokio::test]
    async fn without_a_webroot_publishing_fails_clearly_and_withdrawing_is_done() {
        let challenges = Challenges::new(&config(None, "http://127.0.0.1:9"));
        let report = challenges
            .perform(&task(ChallengeAction::Publish, "tok"))
            .await;
        assert_eq!(report.state, ChallengeReportState::Failed);
        assert!(report.message.unwrap().contains("[challenges] webroot"));
        let report = challenges
            .perform(&task(ChallengeAction::Withdraw, "tok"))
            .await;
        assert_eq!(report.state, ChallengeReportState::Withdrawn);
    }

    #[tokio::test]
    async fn a_served_token_is_ready_and_withdrawal_deletes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let url = web_server(tmp.path().to_path_buf()).await;
        let challenges = Challenges::new(&config(Some(tmp.path()), &url));
        let report = challenges
            .perform(&task(ChallengeAction::Publish, "tok_1"))
            .await;
        assert_eq!(report.state, ChallengeReportState::Ready, "{report:?}");
        let file = tmp.path().join(".well-known/acme-challenge/tok_1");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "tok_1.thumb");
        let report = challenges
            .perform(&task(ChallengeAction::Withdraw, "tok_1"))
            .await;
        assert_eq!(report.state, ChallengeReportState::Withdrawn);
        assert_eq!(report.message, None);
        assert!(!file.exists());
        // Withdrawing again is fine.
        let again = challenges
            .perform(&task(ChallengeAction::Withdraw, "tok_1"))
            .await;
        assert_eq!(again.state, ChallengeReportState::Withdrawn);
        assert!(again.message.unwrap().contains("already gone"));
    }

    #[tokio::test]
    async fn the_check_asks_for_the_validated_name() {
        let tmp = tempfile::tempdir().unwrap();
        let url = web_server(tmp.path().to_path_buf()).await;
        let challenges = Challenges::new(&config(Some(tmp.path()), &url));
        let mut other = task(ChallengeAction::Publish, "tok");
        other.identifier = "other.example.test".into();
        let report = challenges.perform(&other).await;
        assert_eq!(report.state, ChallengeReportState::Failed);
        let message = report.message.unwrap();
        assert!(message.contains("answered 404"), "{message}");
        assert!(!tmp.path().join(".well-known/acme-challenge/tok").exists());
    }

    #[tokio::test]
    async fn a_token_nobody_serves_fails_and_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        // A port nothing listens on: bound, then dropped.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let challenges = Challenges::new(&config(
            Some(tmp.path()),
            &format!("http://127.0.0.1:{port}"),
        ));
        let report = challenges
            .perform(&task(ChallengeAction::Publish, "tok"))
            .await;
        assert_eq!(report.state, ChallengeReportState::Failed);
        let message = report.message.unwrap();
        assert!(message.contains("does not serve the token"), "{message}");
        assert!(message.contains("Host: www.example.test"), "{message}");
        assert!(!tmp.path().join(".well-known/acme-challenge/tok").exists());
        // A bad token never reaches the disk.
        let report = challenges
            .perform(&task(ChallengeAction::Publish, "../tok"))
            .await;
        assert_eq!(report.state, ChallengeReportState::Failed);
        assert!(report.message.unwrap().contains("base64url"));
    }
}
