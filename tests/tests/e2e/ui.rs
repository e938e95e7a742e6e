//! The dashboard in headless Chromium (ChromeDriver + fantoccini) against
//! a real host, agent, local CA and fake asynchronous CA: sign in, find
//! and create certificates and watch them issued and deployed, renew,
//! revoke and disable one, retry a failed job and cancel an open one,
//! retire an agent (and force the retirement of one that holds keys),
//! filter the inventory by issuer and status and see expiry as a colour, a
//! read-only key without write controls (and refused by the server), CSRF
//! refused, and the inventory at 10,000 certificates on both backends.
//! Screenshots of every page go to `<target>/tmp/ui-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use certplane_agent::Mode;
use certplane_testkit::stack::{FileTlsServer, free_port, get, post};
use certplane_testkit::{Backend, FakeCa, Stack, wait_for};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// ChromeDriver and a headless Chromium session; both end on drop.
struct Browser {
    client: Client,
    driver: Child,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port().unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/ensure-test-servers installs it)");
        let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--ignore-certificate-errors", "--window-size=1400,1000",
                    "--disable-extensions", "--no-first-run",
                ],
            }
        }))
        .unwrap();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::new(connector.clone())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot start a Chromium session: {e}"),
            }
        };
        Browser { client, driver }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The text under the first match of `css`. A page's refresh may
    /// replace its content between the find and the read (a stale
    /// element): then it finds it again, a few times.
    async fn text(&self, css: &str) -> String {
        let mut tries = 0;
        loop {
            let found = self.client.find(Locator::Css(css)).await;
            let read = match found {
                Ok(element) => element.text().await,
                Err(e) => Err(e),
            };
            match read {
                Ok(text) => return text,
                Err(e) if tries >= 5 => panic!("no text under {css}: {e}"),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn has(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .is_empty()
    }

    async fn fill(&self, css: &str, value: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    /// Clicks the first match of `css`. A page's refresh may replace its
    /// content between the find and the click: then it finds it again.
    async fn click(&self, css: &str) {
        let mut tries = 0;
        loop {
            let outcome = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.click().await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => return,
                Err(e) if e.is_stale_element_reference() && tries < 5 => tries += 1,
                Err(e) => panic!("cannot click {css}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The number of elements matching `css`.
    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    /// Waits until `css` matches `n` elements (the page refreshes itself).
    async fn wait_count(&self, css: &str, n: usize, timeout: Duration) {
        wait_for(&format!("{n} of {css}"), timeout, || async {
            (self.count(css).await == n).then_some(())
        })
        .await
    }

    /// Makes the next `data-confirm` question answer yes (for this page).
    async fn accept_confirms(&self) {
        self.run("window.confirm = () => true; return true;").await;
    }

    /// The inventory's rows: name, the expiry cell's class and its colour.
    async fn inventory_rows(&self) -> Vec<(String, String, String)> {
        let rows = self
            .run(
                "return [...document.querySelectorAll('#inventory tbody tr')]
                   .filter(r => r.cells.length > 1)
                   .map(r => [r.cells[0].innerText, r.cells[5].className,
                              getComputedStyle(r.cells[5]).color]);",
            )
            .await;
        serde_json::from_value(rows.clone()).unwrap_or_else(|e| panic!("{rows}: {e}"))
    }

    async fn select(&self, css: &str, value: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .select_by_value(value)
            .await
            .unwrap();
    }

    async fn url(&self) -> String {
        self.client.current_url().await.unwrap().to_string()
    }

    /// Waits for the navigation a click started: ChromeDriver may return
    /// from a click on a submit button before the redirect lands.
    async fn wait_url(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        wait_for(what, Duration::from_secs(20), || async {
            let url = self.client.current_url().await.ok()?.to_string();
            done(&url).then_some(url)
        })
        .await
    }

    /// Waits until the page's text (refreshed by the page itself) contains
    /// `needle` under `css`.
    async fn wait_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        wait_for(&format!("{needle:?} in {css}"), timeout, || async {
            let found = self.client.find(Locator::Css(css)).await.ok()?;
            let text = found.text().await.ok()?;
            text.contains(needle).then_some(text)
        })
        .await
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn sign_in(&self, base: &str, key: &str) {
        self.goto(&format!("{base}/ui")).await;
        assert!(
            self.url().await.ends_with("/ui/login"),
            "{}",
            self.url().await
        );
        self.fill("#api_key", key).await;
        self.click("form.card button[type=submit]").await;
        self.wait_url("the inventory after signing in", |u| u.ends_with("/ui"))
            .await;
    }

    async fn sign_out(&self) {
        self.click("header .session button").await;
        self.wait_url("the login page after signing out", |u| {
            u.ends_with("/ui/login")
        })
        .await;
    }

    /// Runs `script` (a function body that may `await`) in the page.
    async fn run(&self, script: &str) -> Value {
        let wrapped = format!(
            "const done = arguments[arguments.length - 1];
             (async () => {{ {script} }})().then(done, e => done('error: ' + e));"
        );
        self.client.execute_async(&wrapped, vec![]).await.unwrap()
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots")
}

/// A new API key of `scope`, made by the admin through the API.
async fn key(stack: &Stack, name: &str, scope: &str) -> String {
    let made = post(
        &stack.host.admin,
        "/api-keys",
        json!({ "name": name, "scope": scope }),
    )
    .await
    .unwrap();
    made["secret"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let stack = Stack::with_fixtures(Backend::Sqlite, 10, &["http-ca"]).await;
    let base = stack.host.url.clone();
    // A second issuer, asynchronous and able to revoke (the local CA
    // cannot): it issues at once here.
    let ca = FakeCa::start().await;
    ca.set_pending_polls(0);
    let fake_ca = post(
        &stack.host.admin,
        "/issuers",
        json!({ "name": "fake-ca", "plugin": "http-ca", "settings": { "url": ca.url() },
                "grants": { "hosts": [ca.grant()] } }),
    )
    .await
    .unwrap();
    let fake_ca_id = fake_ca["id"].as_str().unwrap().to_owned();
    let config = stack.agent_config("web-1");
    let deploy_dir = config.connectors["pem-files"].directories[0].path.clone();
    let stop = CancellationToken::new();
    let agent = tokio::spawn(certplane_agent::run(config, Mode::Continuous, stop.clone()));
    let agent_id = stack.agent_id("web-1").await;
    let web = FileTlsServer::start(None).await.unwrap();
    let target = stack
        .pem_target(
            "files",
            &agent_id,
            &deploy_dir,
            Some((web.port, "ui.e2e.test")),
        )
        .await;
    let target_id = target["id"].as_str().unwrap().to_owned();
    let reader = key(&stack, "reader", "read_only").await;
    let browser = Browser::start().await;

    // Sign in; the inventory is empty.
    browser.goto(&format!("{base}/ui/login")).await;
    browser.screenshot("login").await;
    browser.sign_in(&base, &stack.host.admin_key).await;
    assert!(browser.has("#inventory").await);

    // Create a certificate through the form and watch it be issued and
    // deployed without reloading the page.
    browser.goto(&format!("{base}/ui/certificates/new")).await;
    browser.fill("input[name=name]", "ui-site").await;
    browser.fill("input[name=common_name]", "ui.e2e.test").await;
    browser.fill("input[name=owner]", "team-web").await;
    browser
        .select("select[name=issuer_id]", &stack.issuer_id)
        .await;
    browser.select("select[name=target_id]", &target_id).await;
    browser.screenshot("new-certificate").await;
    browser.click("form.stack button[type=submit]").await;
    let page = browser
        .wait_url("the new certificate's page", |u| {
            u.contains("/ui/certificates/") && !u.contains("/ui/certificates/new")
        })
        .await;
    let cert_id = page
        .split("/ui/certificates/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let cert_dir = deploy_dir.join(&cert_id);
    web.set_files(cert_dir.join("fullchain.pem"), cert_dir.join("privkey.pem"));
    browser
        .wait_text(".flash", "certificate created", Duration::from_secs(20))
        .await;
    let versions = browser
        .wait_text("#versions", "completed", Duration::from_secs(60))
        .await;
    assert!(versions.contains("files"), "{versions}");
    browser
        .wait_text("#versions", "verified", Duration::from_secs(60))
        .await;
    browser.screenshot("certificate").await;

    // Find it in the inventory by a piece of its name and by owner.
    browser.goto(&format!("{base}/ui?q=UI-S")).await;
    assert!(browser.text("#inventory").await.contains("ui-site"));
    browser.goto(&format!("{base}/ui?owner=nobody")).await;
    assert!(!browser.text("#inventory").await.contains("ui-site"));
    browser.goto(&format!("{base}/ui")).await;
    browser.screenshot("inventory").await;

    // A deployment that fails for good (a target whose directory the agent
    // does not grant), then retried from the jobs page.
    let broken = post(
        &stack.host.admin,
        "/targets",
        json!({ "name": "broken", "plugin": "pem-files", "agent_id": agent_id,
                "settings": { "directory": "/nowhere" } }),
    )
    .await
    .unwrap();
    let broken_cert = post(
        &stack.host.admin,
        "/certificates",
        json!({ "name": "ui-broken", "common_name": "broken.e2e.test", "issuer_id": stack.issuer_id,
                "target_ids": [broken["id"]], "key_source": "host" }),
    )
    .await
    .unwrap();
    let broken_id = broken_cert["id"].as_str().unwrap().to_owned();
    browser
        .goto(&format!("{base}/ui/jobs?status=failed&job_type=deployment"))
        .await;
    let failed = browser
        .wait_text("table.jobs", "failed", Duration::from_secs(90))
        .await;
    assert!(!failed.contains("No jobs"), "{failed}");
    browser.screenshot("jobs").await;
    let failed_job = stack
        .jobs(&broken_id)
        .await
        .into_iter()
        .find(|j| j["job_type"] == "deployment" && j["status"] == "failed")
        .expect("a failed deployment");
    let attempts_before = failed_job["attempts"].as_i64().unwrap();
    browser
        .click(&format!(
            "tr[data-job='{}'] form[action*='/retry'] button",
            failed_job["id"].as_str().unwrap()
        ))
        .await;
    browser
        .wait_text(".flash", "queued again", Duration::from_secs(20))
        .await;
    wait_for(
        "the retried job to run again",
        Duration::from_secs(60),
        || async {
            stack
                .jobs(&broken_id)
                .await
                .into_iter()
                .find(|j| j["id"] == failed_job["id"])
                .filter(|j| {
                    j["attempts"].as_i64().unwrap() > attempts_before || j["status"] != "failed"
                })
        },
    )
    .await;

    // Retire an agent that nothing depends on (registered, never run).
    let spare = post(
        &stack.host.admin,
        "/agents/register",
        json!({ "name": "spare", "bootstrap_token": stack.bootstrap_token }),
    )
    .await;
    let spare_id = match spare {
        Ok(v) => v["agent_id"]
            .as_str()
            .or(v["id"].as_str())
            .unwrap()
            .to_owned(),
        Err(e) => panic!("registering a spare agent: {e}"),
    };
    browser.goto(&format!("{base}/ui/agents")).await;
    assert!(browser.text("#agents").await.contains("spare"));
    browser.screenshot("agents").await;
    browser.accept_confirms().await;
    browser
        .click(&format!("tr[data-agent='{spare_id}'] form button"))
        .await;
    browser
        .wait_text(".flash", "agent retired", Duration::from_secs(20))
        .await;
    assert!(!browser.text("#agents").await.contains("spare"));

    certificate_actions(&stack, &browser, &ca, &fake_ca_id).await;
    cancel_and_force_retire(&stack, &browser).await;
    inventory_filters(&stack, &browser, &fake_ca_id).await;

    // The other pages render.
    for (page, css) in [
        ("connectors", "#plugins"),
        ("notifications", "#deliveries"),
        ("audit", "table.audit"),
    ] {
        browser.goto(&format!("{base}/ui/{page}")).await;
        assert!(browser.has(css).await, "{page}");
        browser.screenshot(page).await;
    }
    // Secrets never reach the browser: the CA key is a secret of the issuer.
    browser.goto(&format!("{base}/ui/connectors")).await;
    let source = browser.client.source().await.unwrap();
    assert!(
        source.contains("ca_private_key_pem"),
        "the secret's name is shown"
    );
    assert!(!source.contains("PRIVATE KEY-----"), "no secret value");

    // CSRF: a form post without the token, or with a wrong one, is refused.
    browser
        .goto(&format!("{base}/ui/certificates/{cert_id}"))
        .await;
    let status = browser
        .run(&format!(
            "const r = await fetch('/ui/certificates/{cert_id}/disable', {{ method: 'POST',
               body: new URLSearchParams({{}}), redirect: 'manual' }}); return r.status;"
        ))
        .await;
    assert_eq!(status, json!(403));
    let status = browser
        .run(&format!(
            "const r = await fetch('/ui/certificates/{cert_id}/disable', {{ method: 'POST',
               body: new URLSearchParams({{ csrf: 'forged' }}), redirect: 'manual' }}); return r.status;"
        ))
        .await;
    assert_eq!(status, json!(403));
    let detail =
        certplane_testkit::stack::get(&stack.host.admin, &format!("/certificates/{cert_id}"))
            .await
            .unwrap();
    assert_eq!(detail["status"], "active", "nothing changed");

    // A read-only key: no write controls anywhere, and the server refuses
    // a write even with a valid CSRF token.
    browser.sign_out().await;
    browser.sign_in(&base, &reader).await;
    assert!(!browser.has("a[href='/ui/certificates/new']").await);
    browser
        .goto(&format!("{base}/ui/certificates/{cert_id}"))
        .await;
    assert!(browser.has("#versions").await);
    assert!(
        !browser.has(".actions form").await,
        "no renew/disable/revoke"
    );
    browser.goto(&format!("{base}/ui/jobs")).await;
    assert!(!browser.has("table.jobs form").await, "no retry/cancel");
    browser.goto(&format!("{base}/ui/agents")).await;
    assert!(!browser.has("#agents form").await, "no retire");
    browser.screenshot("read-only-certificate").await;
    browser
        .goto(&format!("{base}/ui/certificates/{cert_id}"))
        .await;
    let status = browser
        .run(&format!(
            "const t = document.querySelector('input[name=csrf]').value;
             const r = await fetch('/ui/certificates/{cert_id}/disable', {{ method: 'POST',
               body: new URLSearchParams({{ csrf: t }}), redirect: 'manual' }}); return r.status;"
        ))
        .await;
    assert_eq!(status, json!(403), "refused by the server");
    let detail =
        certplane_testkit::stack::get(&stack.host.admin, &format!("/certificates/{cert_id}"))
            .await
            .unwrap();
    assert_eq!(
        detail["status"], "active",
        "the read-only key changed nothing"
    );

    browser.close().await;
    stop.cancel();
    let _ = agent.await;
}

/// Renew, revoke and disable a certificate from its page: what the page
/// shows after each, and what the API then holds.
async fn certificate_actions(stack: &Stack, browser: &Browser, ca: &FakeCa, issuer_id: &str) {
    let cert = post(
        &stack.host.admin,
        "/certificates",
        json!({ "name": "ui-revocable", "common_name": "revocable.e2e.test",
                "issuer_id": issuer_id, "key_source": "host" }),
    )
    .await
    .unwrap();
    let id = cert["id"].as_str().unwrap().to_owned();
    let detail = || async {
        get(&stack.host.admin, &format!("/certificates/{id}"))
            .await
            .unwrap()
    };
    let first = wait_for(
        "the certificate issued",
        Duration::from_secs(30),
        || async {
            detail().await["current_version_id"]
                .as_str()
                .map(str::to_owned)
        },
    )
    .await;
    let page = format!("{}/ui/certificates/{id}", stack.host.url);
    let versions = "#versions tr[data-version]";
    browser.goto(&page).await;
    browser
        .wait_count(versions, 1, Duration::from_secs(20))
        .await;
    // The issuer by its name, not only its id (the page refreshes itself,
    // so read it through the retrying wait).
    browser
        .wait_text("dl.facts", "fake-ca", Duration::from_secs(20))
        .await;

    // Renew now: a renewal job, and a second version on the page.
    browser
        .click(".actions form[action$='/renew'] button")
        .await;
    browser
        .wait_text(".flash", "renewal queued", Duration::from_secs(20))
        .await;
    browser
        .wait_count(versions, 2, Duration::from_secs(30))
        .await;
    let renewed = detail().await;
    let second = renewed["current_version_id"].as_str().unwrap().to_owned();
    assert_ne!(second, first, "{renewed}");
    assert_eq!(renewed["versions"].as_array().unwrap().len(), 2);
    assert!(
        stack
            .jobs(&id)
            .await
            .iter()
            .any(|j| j["job_type"] == "renewal"),
        "a renewal job"
    );
    browser.screenshot("certificate-renewed").await;

    // Revoke the version in force, with a reason: the CA is asked, and the
    // page marks that version (only it) revoked.
    browser.accept_confirms().await;
    browser
        .select(".actions select[name=reason]", "superseded")
        .await;
    browser
        .click(".actions form[action$='/revoke'] button")
        .await;
    browser
        .wait_text(".flash", "revocation queued", Duration::from_secs(20))
        .await;
    browser
        .wait_text(
            &format!("#versions tr[data-version='{second}']"),
            "revoked",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        !browser
            .text(&format!("#versions tr[data-version='{first}']"))
            .await
            .contains("revoked"),
        "only the version in force is revoked"
    );
    assert!(
        !browser.has(".actions form[action$='/revoke']").await,
        "a revoked version is not offered for revocation again"
    );
    let revocation = stack
        .jobs(&id)
        .await
        .into_iter()
        .find(|j| j["job_type"] == "revocation")
        .expect("a revocation job");
    assert_eq!(revocation["status"], "completed", "{revocation}");
    assert_eq!(revocation["certificate_version_id"], second.as_str());
    assert_eq!(revocation["payload"]["reason"], "superseded");
    assert_eq!(ca.revocations(), 1, "the CA revoked it");
    browser.screenshot("certificate-revoked").await;

    // Disable: the status shows it, renewal is no longer offered, and one
    // posted anyway is refused.
    browser.accept_confirms().await;
    browser
        .click(".actions form[action$='/disable'] button")
        .await;
    browser
        .wait_text(".flash", "disabled", Duration::from_secs(20))
        .await;
    assert!(browser.has("h1 .badge.s-disabled").await);
    assert!(
        !browser.has(".actions form[action$='/renew']").await,
        "no renew control on a disabled certificate"
    );
    assert!(browser.has(".actions form[action$='/enable']").await);
    assert_eq!(detail().await["status"], "disabled");
    let renewals = |jobs: Vec<Value>| jobs.iter().filter(|j| j["job_type"] == "renewal").count();
    let before = renewals(stack.jobs(&id).await);
    let landed = browser
        .run(&format!(
            "const t = document.querySelector('input[name=csrf]').value;
             const r = await fetch('/ui/certificates/{id}/renew', {{ method: 'POST',
               body: new URLSearchParams({{ csrf: t }}) }}); return r.url;"
        ))
        .await;
    assert!(
        landed.as_str().unwrap_or_default().contains("error="),
        "{landed}"
    );
    let after = detail().await;
    assert_eq!(after["status"], "disabled");
    assert_eq!(after["current_version_id"], second.as_str());
    assert_eq!(renewals(stack.jobs(&id).await), before, "nothing renewed");
    browser.screenshot("certificate-disabled").await;
}

/// A job that stays open (its agent never polls) cancelled from the jobs
/// page; then that agent, which holds the certificate's key, retired from
/// the agents page: refused with its dependency counts, then forced with a
/// reason, which disables the certificate and says why on its page.
async fn cancel_and_force_retire(stack: &Stack, browser: &Browser) {
    let base = &stack.host.url;
    let admin = &stack.host.admin;
    let idle = post(
        admin,
        "/agents/register",
        json!({ "name": "idle", "bootstrap_token": stack.bootstrap_token }),
    )
    .await
    .unwrap();
    let idle_id = idle["agent_id"].as_str().unwrap().to_owned();
    let target = post(
        admin,
        "/targets",
        json!({ "name": "idle-files", "plugin": "pem-files", "agent_id": idle_id,
                "settings": { "directory": "/certs" } }),
    )
    .await
    .unwrap();
    let cert = post(
        admin,
        "/certificates",
        json!({ "name": "ui-stranded", "common_name": "stranded.e2e.test",
                "issuer_id": stack.issuer_id, "target_ids": [target["id"]] }),
    )
    .await
    .unwrap();
    assert_eq!(cert["key_source"], "agent", "the idle agent holds the key");
    let cert_id = cert["id"].as_str().unwrap().to_owned();
    let job = wait_for("the open issuance job", Duration::from_secs(20), || async {
        stack.jobs(&cert_id).await.into_iter().find(|j| {
            j["job_type"] == "issuance"
                && matches!(j["status"].as_str(), Some("pending" | "awaiting_csr"))
        })
    })
    .await;
    let job_id = job["id"].as_str().unwrap().to_owned();

    browser
        .goto(&format!("{base}/ui/jobs?certificate_id={cert_id}"))
        .await;
    let row = format!("tr[data-job='{job_id}']");
    assert!(browser.has(&row).await);
    browser.accept_confirms().await;
    browser
        .click(&format!("{row} form[action*='/cancel'] button"))
        .await;
    browser
        .wait_text(".flash", "job cancelled", Duration::from_secs(20))
        .await;
    browser
        .wait_text(&row, "cancelled", Duration::from_secs(20))
        .await;
    assert!(
        !browser.has(&format!("{row} form")).await,
        "a cancelled job offers nothing"
    );
    let job = get(admin, &format!("/jobs/{job_id}")).await.unwrap();
    assert_eq!(job["status"], "cancelled", "{job}");
    browser.screenshot("job-cancelled").await;

    browser.goto(&format!("{base}/ui/agents")).await;
    let row = format!("tr[data-agent='{idle_id}']");
    assert!(browser.text(&row).await.contains("idle-files"));
    browser.accept_confirms().await;
    browser.click(&format!("{row} form button")).await;
    let refused = browser
        .wait_text(".flash.error", "active_targets", Duration::from_secs(20))
        .await;
    assert!(
        refused.contains("active_targets: 1") && refused.contains("active_certificates: 1"),
        "{refused}"
    );
    assert_eq!(
        get(admin, &format!("/agents/{idle_id}")).await.unwrap()["status"],
        "active"
    );
    browser.screenshot("agent-retire-refused").await;
    browser.accept_confirms().await;
    browser.click(&format!("{row} input[name=force]")).await;
    browser
        .fill(&format!("{row} input[name=reason]"), "decommissioned")
        .await;
    browser.click(&format!("{row} form button")).await;
    browser
        .wait_text(".flash", "agent retired", Duration::from_secs(20))
        .await;
    assert!(!browser.has(&row).await, "retired agents are hidden");
    let agent = get(admin, &format!("/agents/{idle_id}")).await.unwrap();
    assert_eq!(agent["status"], "retired", "{agent}");
    assert_eq!(agent["retired_reason"], "decommissioned", "{agent}");
    let cert = get(admin, &format!("/certificates/{cert_id}"))
        .await
        .unwrap();
    assert_eq!(cert["status"], "disabled", "{cert}");
    let reason = cert["disabled_reason"].as_str().unwrap().to_owned();
    assert!(reason.contains(&idle_id), "{reason}");
    browser
        .goto(&format!("{base}/ui/certificates/{cert_id}"))
        .await;
    assert!(browser.has("h1 .badge.s-disabled").await);
    let facts = browser.text("dl.facts").await;
    assert!(
        facts.contains("Disabled because") && facts.contains(&reason),
        "{facts}"
    );
    browser
        .screenshot("certificate-disabled-by-retirement")
        .await;
}

/// The inventory filtered by issuer and by status in the browser, and
/// expiry as a colour: within a month, later, never issued.
async fn inventory_filters(stack: &Stack, browser: &Browser, fake_ca_id: &str) {
    let names = |rows: Vec<(String, String, String)>| {
        let mut names: Vec<String> = rows.into_iter().map(|r| r.0).collect();
        names.sort();
        names
    };
    browser.goto(&format!("{}/ui", stack.host.url)).await;
    let rows = browser.inventory_rows().await;
    let expiry = |name: &str| {
        rows.iter()
            .find(|r| r.0 == name)
            .map(|r| (r.1.clone(), r.2.clone()))
            .unwrap_or_else(|| panic!("no {name} in {rows:?}"))
    };
    // The local CA issues for 30 days, the fake CA for 90.
    let (soon, soon_colour) = expiry("ui-site");
    let (later, later_colour) = expiry("ui-revocable");
    let (never, _) = expiry("ui-stranded");
    assert_eq!(
        (soon.as_str(), later.as_str(), never.as_str()),
        ("exp-month", "exp-ok", "exp-none"),
        "{rows:?}"
    );
    assert_ne!(soon_colour, later_colour, "expiry shows as a colour");

    browser
        .select("form.filters select[name=issuer]", fake_ca_id)
        .await;
    browser.click("form.filters button[type=submit]").await;
    browser
        .wait_url("the issuer filter", |u| u.contains("issuer="))
        .await;
    assert_eq!(names(browser.inventory_rows().await), ["ui-revocable"]);
    browser.screenshot("inventory-by-issuer").await;

    browser.select("form.filters select[name=issuer]", "").await;
    browser
        .select("form.filters select[name=status]", "disabled")
        .await;
    browser.click("form.filters button[type=submit]").await;
    browser
        .wait_url("the status filter", |u| u.contains("status=disabled"))
        .await;
    assert_eq!(
        names(browser.inventory_rows().await),
        ["ui-revocable", "ui-stranded"]
    );
    browser.screenshot("inventory-disabled").await;

    browser
        .select("form.filters select[name=status]", "active")
        .await;
    browser.click("form.filters button[type=submit]").await;
    browser
        .wait_url("the status filter", |u| u.contains("status=active"))
        .await;
    assert_eq!(
        names(browser.inventory_rows().await),
        ["ui-broken", "ui-site"]
    );
}

/// 10,000 certificates on each backend: the inventory's first page, a
/// search and a filter each render in under a second (the median of a
/// few loads; all printed).
mod inventory_of_ten_thousand_renders_within_a_second {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::inventory_of_ten_thousand(Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::inventory_of_ten_thousand(Backend::Postgres).await
    }
}

/// Loads of each page the median is taken of.
const LOADS: usize = 5;

/// Never due for renewal within the test, expiring over the next 12 weeks,
/// 20 owners.
async fn insert_ten_thousand(stack: &Stack) {
    match stack.backend {
        Backend::Sqlite => {
            let db = stack.host.config().data_dir.join("certplane.db");
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
                .await
                .unwrap();
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
                 INSERT INTO certificates (id, name, common_name, sans, key_type, key_source, issuer_id,
                     renew_before_secs, owner, status, not_after, renew_at, created_at, updated_at)
                 SELECT printf('00000000-0000-7000-8000-%012d', i), printf('bulk-%05d', i),
                     printf('h%05d.bulk.test', i), '[]', 'ecdsa-p256', 'host', $1, 2592000,
                     printf('team-%d', i % 20), 'active',
                     strftime('%Y-%m-%dT%H:%M:%S.000000Z', 'now', printf('+%d hours', (i * 7) % 2016)),
                     strftime('%Y-%m-%dT%H:%M:%S.000000Z', 'now', '+400 days'),
                     strftime('%Y-%m-%dT%H:%M:%S.000000Z', 'now'),
                     strftime('%Y-%m-%dT%H:%M:%S.000000Z', 'now')
                 FROM n",
            )
            .bind(&stack.issuer_id)
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        Backend::Postgres => {
            let url = stack.host.config().database_url.clone().unwrap();
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query(
                "INSERT INTO certificates (id, name, common_name, sans, key_type, key_source, issuer_id,
                     renew_before_secs, owner, status, not_after, renew_at, created_at, updated_at)
                 SELECT '00000000-0000-7000-8000-' || lpad(i::text, 12, '0'),
                     'bulk-' || lpad(i::text, 5, '0'), 'h' || lpad(i::text, 5, '0') || '.bulk.test',
                     '[]'::jsonb, 'ecdsa-p256', 'host', $1, 2592000, 'team-' || (i % 20), 'active',
                     now() + make_interval(hours => (i * 7) % 2016), now() + interval '400 days',
                     now(), now()
                 FROM generate_series(1, 10000) AS i",
            )
            .bind(&stack.issuer_id)
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
    }
}

async fn inventory_of_ten_thousand(backend: Backend) {
    let stack = Stack::new(backend, 10).await;
    insert_ten_thousand(&stack).await;
    let base = stack.host.url.clone();
    let browser = Browser::start().await;
    browser.sign_in(&base, &stack.host.admin_key).await;
    let mut medians = Vec::new();
    for (name, path) in [
        ("first page", "/ui"),
        ("search", "/ui?q=bulk-077"),
        ("owner filter, page 3", "/ui?owner=team-7&page=3"),
    ] {
        let mut loads = Vec::new();
        for _ in 0..LOADS {
            browser.goto(&format!("{base}{path}")).await;
            let ms = browser
                .run(
                    "const n = performance.getEntriesByType('navigation')[0];
                     return n.loadEventEnd - n.startTime;",
                )
                .await
                .as_f64()
                .unwrap();
            let text = browser.text("#inventory").await;
            assert!(text.contains("bulk-"), "{name}: {text}");
            loads.push(ms);
        }
        loads.sort_by(f64::total_cmp);
        medians.push((name, loads[LOADS / 2], loads));
    }
    browser.goto(&format!("{base}/ui")).await;
    let total = browser.text(".pager").await;
    assert!(total.contains("10000 in all"), "{total}");
    browser
        .screenshot(&format!("inventory-10000-{backend:?}").to_lowercase())
        .await;
    for (name, median, loads) in &medians {
        eprintln!(
            "inventory at 10,000 certificates on {backend:?}, {name}: p50 {median:.0} ms \
             (navigation start to load end; loads {loads:.0?})"
        );
    }
    for (name, median, _) in &medians {
        assert!(*median < 1000.0, "{backend:?} {name}: p50 {median} ms");
    }
    browser.close().await;
}
