//! http-01 challenges this agent serves (an issuer whose
//! `grants.challenges.http_01` is `"agent"`), in one of two modes:
//!
//! - **webroot** (`[challenges] webroot`): the token file goes into the
//!   local web server's webroot ([`crate::webroot`]) and is checked through
//!   that web server at `[challenges] check_url`;
//! - **standalone** (`[challenges] listen`): the agent's own listener
//!   ([`crate::standalone`]) answers the token from memory and is checked
//!   at its bound address.
//!
//! Both go through the same flow: the work poll hands out tasks;
//! `publish` puts the token where it is served, fetches it back the way
//! the CA will (`GET /.well-known/acme-challenge/<token>` with the name as
//! `Host`) and reports `ready` or `failed`; `withdraw` removes it and
//! reports `withdrawn`.
//!
//! Reports are idempotent on the host, and an unreported task is handed out
//! again, so a task interrupted anywhere is simply done again.

use std::net::SocketAddr;
use std::time::Duration;

use certplane_proto::agent::{
    ChallengeAction, ChallengeReport, ChallengeReportState, ChallengeTask,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ChallengesConfig;
use crate::hostapi::{HostApi, HostError};
use crate::standalone::{ListenError, Standalone};
use crate::webroot::{Webroot, WebrootError, valid_key_authorization, valid_token};

/// Longest answer read from the web server.
const MAX_BODY: usize = 64 * 1024;
/// Limit on one fetch of the token.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// First pause between fetches; doubles up to [`LAST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// Longest pause between fetches.
const LAST_PAUSE: Duration = Duration::from_secs(2);

/// Where a token is fetched back over plain HTTP.
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

    /// `http://<addr>`.
    fn of_addr(addr: SocketAddr) -> CheckUrl {
        CheckUrl {
            host: CheckHost::Ip(addr.ip()),
            port: addr.port(),
            text: format!("http://{addr}"),
        }
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

/// Where this agent puts tokens for the CA to fetch.
#[derive(Debug, Clone)]
enum Publisher {
    /// Neither `webroot` nor `listen`: http-01 tasks are refused.
    Unset,
    /// Token files served by the local web server, checked at `check`.
    Webroot {
        webroot: Webroot,
        check: Result<CheckUrl, String>,
    },
    /// Tokens in memory, served by the agent's own listener.
    Standalone(Standalone),
}

impl Publisher {
    /// What serves the tokens, for messages.
    fn server(&self) -> &'static str {
        match self {
            Publisher::Standalone(_) => "the agent's listener",
            Publisher::Unset | Publisher::Webroot { .. } => "the web server",
        }
    }

    /// What a token is, for messages.
    fn token_noun(&self) -> &'static str {
        match self {
            Publisher::Standalone(_) => "the token",
            Publisher::Unset | Publisher::Webroot { .. } => "the token file",
        }
    }

    fn check(&self) -> Result<CheckUrl, String> {
        match self {
            Publisher::Unset => Err(NO_PUBLISHER.into()),
            Publisher::Webroot { check, .. } => check
                .clone()
                .map_err(|e| format!("`[challenges] check_url`: {e}")),
            Publisher::Standalone(standalone) => Ok(CheckUrl::of_addr(standalone.check_addr())),
        }
    }

    /// Makes `token` served; returns where, for the log.
    async fn put(&self, token: &str, key_authorization: &str) -> Result<String, String> {
        match self {
            Publisher::Unset => Err(NO_PUBLISHER.into()),
            Publisher::Webroot { webroot, .. } => {
                let (webroot, token, value) = (
                    webroot.clone(),
                    token.to_string(),
                    key_authorization.to_string(),
                );
                let path = blocking(move || webroot.write_token(&token, &value)).await?;
                Ok(path.display().to_string())
            }
            Publisher::Standalone(standalone) => {
                standalone
                    .insert(token, key_authorization)
                    .map_err(|e| e.to_string())?;
                Ok(format!("http://{}", standalone.local_addr()))
            }
        }
    }

    /// Stops serving `token`; `false` when it was not served.
    async fn remove(&self, token: &str) -> Result<bool, String> {
        match self {
            Publisher::Unset => Ok(false),
            Publisher::Webroot { webroot, .. } => {
                let (webroot, token) = (webroot.clone(), token.to_string());
                blocking(move || webroot.remove_token(&token)).await
            }
            Publisher::Standalone(standalone) => Ok(standalone.remove(token)),
        }
    }
}

const NO_PUBLISHER: &str = "this agent serves no http-01 challenges: set `[challenges] webroot` \
    in its configuration to the directory its web server serves, or `[challenges] listen` to \
    the address where the agent answers them itself";

/// Serves challenge tasks with this agent's `[challenges]` settings.
#[derive(Debug, Clone)]
pub struct Challenges {
    publisher: Publisher,
    check_within: Duration,
}

impl Challenges {
    /// The handler of `config` (checked when the configuration loaded).
    /// With `listen`, binds it and serves until `shutdown` is cancelled or
    /// the last clone of the handler is dropped.
    pub async fn start(
        config: &ChallengesConfig,
        shutdown: &CancellationToken,
    ) -> Result<Challenges, ListenError> {
        let publisher = match (&config.webroot, config.listen) {
            (_, Some(addr)) => Publisher::Standalone(Standalone::bind(addr, shutdown).await?),
            (Some(webroot), None) => Publisher::Webroot {
                webroot: Webroot::new(webroot.clone()),
                check: CheckUrl::parse(&config.check_url),
            },
            (None, None) => Publisher::Unset,
        };
        Ok(Challenges {
            publisher,
            check_within: Duration::from_secs(config.check_within_secs),
        })
    }

    /// The listener's bound address in standalone mode.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        match &self.publisher {
            Publisher::Standalone(standalone) => Some(standalone.local_addr()),
            Publisher::Unset | Publisher::Webroot { .. } => None,
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
        let publisher = &self.publisher;
        if matches!(publisher, Publisher::Unset) {
            return failed(NO_PUBLISHER);
        }
        if !valid_name(&task.identifier) {
            return failed(format!("{:?} is not a DNS name", task.identifier));
        }
        // Checked here for both modes, so neither the disk nor the map ever
        // sees a token a path or a response could make use of.
        if !valid_token(&task.token) {
            return failed(format!(
                "cannot publish the token: {}",
                WebrootError::BadToken(task.token.clone())
            ));
        }
        if !valid_key_authorization(&task.key_authorization) {
            return failed(format!(
                "cannot publish the token: {}",
                WebrootError::BadKeyAuthorization
            ));
        }
        let check = match publisher.check() {
            Ok(check) => check,
            Err(e) => return failed(e),
        };
        let at = match publisher.put(&task.token, &task.key_authorization).await {
            Ok(at) => at,
            Err(e) => return failed(format!("cannot publish the token: {e}")),
        };
        tracing::info!(job = %task.job_id, challenge = %task.challenge_id,
            identifier = %task.identifier, %at, "challenge token published");
        match self.served(&check, task).await {
            Ok(()) => ChallengeReport {
                state: ChallengeReportState::Ready,
                message: None,
            },
            Err(seen) => {
                // Not served: nothing should be left for the CA to find.
                if let Err(e) = publisher.remove(&task.token).await {
                    tracing::warn!(job = %task.job_id, challenge = %task.challenge_id,
                        error = %e, "cannot remove a token that is not served");
                }
                failed(format!(
                    "{} does not serve the token within {} s: {seen}",
                    publisher.server(),
                    self.check_within.as_secs()
                ))
            }
        }
    }

    async fn withdraw(&self, task: &ChallengeTask) -> ChallengeReport {
        let publisher = &self.publisher;
        if matches!(publisher, Publisher::Unset) {
            return ChallengeReport {
                state: ChallengeReportState::Withdrawn,
                message: Some("this agent serves no http-01 challenges; nothing to remove".into()),
            };
        }
        let noun = publisher.token_noun();
        let message = match publisher.remove(&task.token).await {
            Ok(true) => None,
            Ok(false) => Some(format!("{noun} was already gone")),
            // Retrying would not make a file this agent cannot delete go
            // away; the host keeps the message with the challenge.
            Err(e) => {
                tracing::warn!(job = %task.job_id, challenge = %task.challenge_id,
                    error = %e, "a token could not be removed");
                Some(format!("{noun} could not be removed: {e}"))
            }
        };
        ChallengeReport {
            state: ChallengeReportState::Withdrawn,
            message,
        }
    }

    /// Fetches the token through whatever serves it until it answers the
    /// key authorization or `check_within` has passed; the error is the
    /// last observation.
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
            listen: None,
            check_url: check_url.into(),
            check_within_secs: 1,
        }
    }

    async fn start(config: &ChallengesConfig) -> Challenges {
        Challenges::start(config, &CancellationToken::new())
            .await
            .unwrap()
    }

    /// The agent in standalone mode on a free loopback port.
    async fn standalone() -> Challenges {
        let mut config = config(None, "http://127.0.0.1:9");
        config.listen = Some("127.0.0.1:0".parse().unwrap());
        start(&config).await
    }

    async fn get(challenges: &Challenges, token: &str) -> (u16, String) {
        let addr = challenges.listen_addr().unwrap();
        let path = format!("/.well-known/acme-challenge/{token}");
        fetch(&CheckUrl::of_addr(addr), &path, "www.example.test")
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn without_a_webroot_publishing_fails_clearly_and_withdrawing_is_done() {
        let challenges = start(&config(None, "http://127.0.0.1:9")).await;
        let report = challenges
            .perform(&task(ChallengeAction::Publish, "tok"))
            .await;
        assert_eq!(report.state, ChallengeReportState::Failed);
        let message = report.message.unwrap();
        assert!(message.contains("[challenges] webroot"), "{message}");
        assert!(message.contains("[challenges] listen"), "{message}");
        let report = challenges
            .perform(&task(ChallengeAction::Withdraw, "tok"))
            .await;
        assert_eq!(report.state, ChallengeReportState::Withdrawn);
    }

    #[tokio::test]
    async fn a_served_token_is_ready_and_withdrawal_deletes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let url = web_server(tmp.path().to_path_buf()).await;
        let challenges = start(&config(Some(tmp.path()), &url)).await;
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
        let challenges = start(&config(Some(tmp.path()), &url)).await;
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
        let challenges = start(&config(
            Some(tmp.path()),
            &format!("http://127.0.0.1:{port}"),
        ))
        .await;
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

    #[tokio::test]
    async fn standalone_serves_a_token_while_it_is_live() {
        let challenges = standalone().await;
        assert_eq!(get(&challenges, "tok_1").await.0, 404);
        let report = challenges
            .perform(&task(ChallengeAction::Publish, "tok_1"))
            .await;
        assert_eq!(
            report,
            ChallengeReport {
                state: ChallengeReportState::Ready,
                message: None
            }
        );
        assert_eq!(
            get(&challenges, "tok_1").await,
            (200, "tok_1.thumb".to_string())
        );
        // Another token, live or not, is not this one.
        assert_eq!(get(&challenges, "tok_2").await.0, 404);
        let report = challenges
            .perform(&task(ChallengeAction::Withdraw, "tok_1"))
            .await;
        assert_eq!(
            report,
            ChallengeReport {
                state: ChallengeReportState::Withdrawn,
                message: None
            }
        );
        assert_eq!(get(&challenges, "tok_1").await.0, 404);
        let again = challenges
            .perform(&task(ChallengeAction::Withdraw, "tok_1"))
            .await;
        assert_eq!(again.state, ChallengeReportState::Withdrawn);
        assert_eq!(again.message.as_deref(), Some("the token was already gone"));
    }

    #[tokio::test]
    async fn standalone_refuses_malformed_tokens_before_serving_them() {
        let challenges = standalone().await;
        for token in ["../tok", "a.b", ""] {
            let report = challenges
                .perform(&task(ChallengeAction::Publish, token))
                .await;
            assert_eq!(report.state, ChallengeReportState::Failed, "{token:?}");
            assert!(report.message.unwrap().contains("base64url"), "{token:?}");
        }
        let mut bad_value = task(ChallengeAction::Publish, "tok");
        bad_value.key_authorization = "tok thumb".into();
        let report = challenges.perform(&bad_value).await;
        assert_eq!(report.state, ChallengeReportState::Failed);
        assert!(report.message.unwrap().contains("key authorization"));
        assert_eq!(get(&challenges, "tok").await.0, 404);
    }

    #[tokio::test]
    async fn standalone_on_any_address_checks_through_loopback() {
        let mut config = config(None, "http://127.0.0.1:9");
        config.listen = Some("0.0.0.0:0".parse().unwrap());
        let challenges = start(&config).await;
        let report = challenges
            .perform(&task(ChallengeAction::Publish, "tok"))
            .await;
        assert_eq!(report.state, ChallengeReportState::Ready, "{report:?}");
    }

    #[tokio::test]
    async fn a_listen_address_in_use_fails_the_start() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut config = config(None, "http://127.0.0.1:9");
        config.listen = Some(taken.local_addr().unwrap());
        let err = Challenges::start(&config, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot listen"), "{err}");
    }
}
