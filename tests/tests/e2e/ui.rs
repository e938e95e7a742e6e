//! The dashboard in headless Chromium (ChromeDriver + fantoccini) against
//! a real host, agent and local CA: sign in, find and create certificates
//! and watch them issued and deployed, retry a failed job, retire an
//! agent, a read-only key without write controls (and refused by the
//! server), CSRF refused, and the inventory at 10,000 certificates.
//! Screenshots of every page go to `<target>/tmp/ui-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use certplane_agent::Mode;
use certplane_testkit::stack::{FileTlsServer, free_port, post};
use certplane_testkit::{Backend, Stack, wait_for};
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

    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .unwrap()
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

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
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
    let stack = Stack::new(Backend::Sqlite, 10).await;
    let base = stack.host.url.clone();
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
    browser
        .run("window.confirm = () => true; return true;")
        .await;
    browser
        .click(&format!("tr[data-agent='{spare_id}'] form button"))
        .await;
    browser
        .wait_text(".flash", "agent retired", Duration::from_secs(20))
        .await;
    assert!(!browser.text("#agents").await.contains("spare"));
    // The agent with a target cannot be retired without force: the
    // refusal shows what depends on it.
    browser
        .run("window.confirm = () => true; return true;")
        .await;
    browser
        .click(&format!("tr[data-agent='{agent_id}'] form button"))
        .await;
    browser
        .wait_text(".flash.error", "target", Duration::from_secs(20))
        .await;

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
    let landed = browser
        .run(&format!(
            "const t = document.querySelector('input[name=csrf]').value;
             const r = await fetch('/ui/certificates/{cert_id}/disable', {{ method: 'POST',
               body: new URLSearchParams({{ csrf: t }}) }}); return r.url;"
        ))
        .await;
    assert!(
        landed.as_str().unwrap_or_default().contains("error="),
        "{landed}"
    );
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

/// 10,000 certificates: the inventory's first page, a search and a filter
/// each render in under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_of_ten_thousand_renders_within_a_second() {
    let stack = Stack::new(Backend::Sqlite, 10).await;
    let db = stack.host.config().data_dir.join("certplane.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    // Never due for renewal within the test, expiring over the next 12 weeks.
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
    let base = stack.host.url.clone();
    let browser = Browser::start().await;
    browser.sign_in(&base, &stack.host.admin_key).await;
    let mut timings = Vec::new();
    for (name, path) in [
        ("first page", "/ui"),
        ("search", "/ui?q=bulk-077"),
        ("owner filter, page 3", "/ui?owner=team-7&page=3"),
        ("first page again", "/ui"),
    ] {
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
        timings.push((name, ms));
    }
    let total = browser.text(".pager").await;
    browser.goto(&format!("{base}/ui")).await;
    assert!(
        browser.text(".pager").await.contains("10000 in all"),
        "{total}"
    );
    browser.screenshot("inventory-10000").await;
    eprintln!("inventory at 10,000 certificates (ms, navigation start to load end): {timings:?}");
    for (name, ms) in &timings {
        assert!(*ms < 1000.0, "{name} took {ms} ms");
    }
    browser.close().await;
}
