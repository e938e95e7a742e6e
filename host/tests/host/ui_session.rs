//! The dashboard's sessions and forms over HTTP, through the real router
//! on both backends: the cookies' attributes, sign-in refused without its
//! double-submit token, every form post refused without the session's
//! CSRF token (each route the dashboard lists, and every form its pages
//! show), a read-only session refused on every write, a revoked or
//! expired key ending its session at once, and no secret in any page.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use certplane_host::store::{ApiScope, JobType, NewApiKey, NewJob};
use certplane_host::ui::{FORM_ROUTES, SESSION_HOURS};
use certplane_testkit::app::{BOOTSTRAP, Reply, TestApp};
use certplane_testkit::{Backend, both_backends, exec, test_ca};
use chrono::{Duration, Utc};
use serde_json::json;

both_backends!(
    session_cookie_is_http_only_secure_and_strict,
    sign_in_needs_the_login_cookie_and_its_token,
    every_form_post_needs_the_csrf_token,
    read_only_sessions_change_nothing,
    revoked_or_expired_key_ends_the_session_at_once,
    pages_never_carry_a_secret,
    an_unknown_page_is_an_html_404,
);

const SESSION: &str = "certplane_session";
const LOGIN: &str = "certplane_login";

/// Every page a signed-in user can open, with `{cert}` for a certificate.
const PAGES: [&str; 8] = [
    "/ui",
    "/ui/jobs",
    "/ui/agents",
    "/ui/connectors",
    "/ui/notifications",
    "/ui/audit",
    "/ui/certificates/new",
    "/ui/certificates/{cert}",
];

/// A request as a browser sends it: optional cookie header, optional form.
async fn request(
    app: &TestApp,
    method: Method,
    path: &str,
    cookie: Option<&str>,
    form: Option<&[(&str, &str)]>,
) -> Reply {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    let body = match form {
        Some(pairs) => {
            builder = builder.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            let mut encoded = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in pairs {
                encoded.append_pair(k, v);
            }
            Body::from(encoded.finish())
        }
        None => Body::empty(),
    };
    app.send(builder.body(body).unwrap()).await
}

async fn page(app: &TestApp, path: &str, cookie: &str) -> Reply {
    request(app, Method::GET, path, Some(cookie), None).await
}

async fn post(app: &TestApp, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Reply {
    request(app, Method::POST, path, cookie, Some(form)).await
}

fn location(reply: &Reply) -> &str {
    reply
        .headers
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_default()
}

/// The `Set-Cookie` line for cookie `name`.
fn set_cookie<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|line| line.starts_with(&format!("{name}=")))
}

/// A `Set-Cookie` line's value and its attributes (names lower-cased).
fn parse_cookie(line: &str) -> (String, HashMap<String, String>) {
    let mut parts = line.split(';').map(str::trim);
    let value = parts
        .next()
        .and_then(|p| p.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap();
    let attrs = parts
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), v.to_owned()),
            None => (p.to_ascii_lowercase(), String::new()),
        })
        .collect();
    (value, attrs)
}

/// Asserts the attributes every dashboard cookie carries, and `Max-Age`.
fn assert_guarded_cookie(line: &str, max_age: i64) {
    let (_, attrs) = parse_cookie(line);
    assert!(attrs.contains_key("httponly"), "not HttpOnly: {line}");
    assert!(attrs.contains_key("secure"), "not Secure: {line}");
    assert_eq!(
        attrs.get("samesite").map(String::as_str),
        Some("Strict"),
        "{line}"
    );
    assert_eq!(attrs.get("path").map(String::as_str), Some("/ui"), "{line}");
    assert_eq!(
        attrs.get("max-age").map(String::as_str),
        Some(max_age.to_string().as_str()),
        "{line}"
    );
}

/// The value of the first hidden `csrf` field of a page.
fn csrf_field(html: &str) -> String {
    let start = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field in {html}"))
        + "name=\"csrf\" value=\"".len();
    html[start..].split('"').next().unwrap().to_owned()
}

/// The sign-in form's cookie value and the token its form carries.
pub(crate) async fn login_form(app: &TestApp) -> (String, String, Reply) {
    let form = request(app, Method::GET, "/ui/login", None, None).await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.text);
    let line = set_cookie(&form, LOGIN).expect("the sign-in form sets its cookie");
    let (cookie, _) = parse_cookie(line);
    let token = csrf_field(&form.text);
    (cookie, token, form)
}

/// A signed-in dashboard user.
pub(crate) struct Signed {
    /// The `Cookie` header a browser sends.
    pub(crate) cookie: String,
    /// The session's CSRF token, read from a page.
    pub(crate) csrf: String,
    /// The sign-in answer.
    pub(crate) reply: Reply,
}

/// Signs `key` in through the sign-in form, as a browser does.
pub(crate) async fn sign_in(app: &TestApp, key: &str) -> Signed {
    let (login_cookie, token) = {
        let (c, t, _) = login_form(app).await;
        (c, t)
    };
    let reply = post(
        app,
        "/ui/login",
        Some(&format!("{LOGIN}={login_cookie}")),
        &[("api_key", key), ("csrf", &token)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text);
    assert_eq!(location(&reply), "/ui", "signed in");
    let line = set_cookie(&reply, SESSION).expect("a session cookie");
    let cookie = format!("{SESSION}={}", parse_cookie(line).0);
    let inventory = page(app, "/ui", &cookie).await;
    assert_eq!(inventory.status, StatusCode::OK, "{}", inventory.text);
    let csrf = csrf_field(&inventory.text);
    Signed {
        cookie,
        csrf,
        reply,
    }
}

/// What the form tests act on: a certificate with an open issuance job,
/// and an agent nothing depends on.
struct Fixture {
    cert: String,
    job: String,
    agent: String,
    issuer: String,
}

async fn fixture(app: &TestApp) -> Fixture {
    let (ca_cert, ca_key) = test_ca();
    let issuer = app
        .post(
            "/api/v1/issuers",
            &app.admin,
            json!({ "name": "ui-ca", "plugin": "local-ca",
                    "settings": { "ca_certificate_pem": ca_cert, "validity_days": 30 },
                    "secrets": { "ca_private_key_pem": ca_key } }),
        )
        .await;
    assert_eq!(issuer.status, StatusCode::CREATED, "{}", issuer.text);
    let issuer = issuer.json["id"].as_str().unwrap().to_owned();
    let cert = app
        .post(
            "/api/v1/certificates",
            &app.admin,
            json!({ "name": "ui-form", "common_name": "form.ui.test", "issuer_id": issuer }),
        )
        .await;
    assert_eq!(cert.status, StatusCode::CREATED, "{}", cert.text);
    let cert = cert.json["id"].as_str().unwrap().to_owned();
    // Nothing runs jobs here: the issuance job the renewal sweep would
    // make, made by hand, stays open.
    let job = app
        .store
        .create_job(NewJob::new(JobType::Issuance).certificate(cert.clone()))
        .await
        .unwrap()
        .id;
    let agent = app
        .call(
            Method::POST,
            "/api/v1/agents/register",
            None,
            Some(json!({ "name": "ui-spare", "bootstrap_token": BOOTSTRAP })),
        )
        .await;
    assert_eq!(agent.status, StatusCode::CREATED, "{}", agent.text);
    let agent = agent.json["agent_id"].as_str().unwrap().to_owned();
    Fixture {
        cert,
        job,
        agent,
        issuer,
    }
}

/// What a form post could change, to compare before and after.
async fn state_of(app: &TestApp, f: &Fixture) -> serde_json::Value {
    let cert = app
        .get(&format!("/api/v1/certificates/{}", f.cert), &app.admin)
        .await;
    let job = app
        .get(&format!("/api/v1/jobs/{}", f.job), &app.admin)
        .await;
    let agent = app
        .get(&format!("/api/v1/agents/{}", f.agent), &app.admin)
        .await;
    let certs = app.get("/api/v1/certificates", &app.admin).await;
    json!({
        "cert_status": cert.json["status"],
        "cert_renew_at": cert.json["renew_at"],
        "job_status": job.json["status"],
        "job_attempts": job.json["attempts"],
        "agent_status": agent.json["status"],
        "agent_retired_at": agent.json["retired_at"],
        "certificates": certs.json["total"],
    })
}

async fn audit_total(app: &TestApp) -> u64 {
    let r = app.get("/api/v1/audit?per_page=1", &app.admin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["total"].as_u64().expect("total")
}

/// One form post: its route pattern, path and fields.
type FormPost = (&'static str, String, Vec<(&'static str, String)>);

/// Every state-changing post of the dashboard, made concrete: route
/// pattern, path, and a form that — with a valid token — the route
/// accepts. A route the dashboard lists that is missing here fails the
/// test, so a new form cannot go untested.
fn form_posts(f: &Fixture) -> Vec<FormPost> {
    let mut posts = Vec::new();
    for pattern in FORM_ROUTES {
        match pattern {
            // Checked by its own cookie: sign_in_needs_the_login_cookie_and_its_token.
            "/ui/login" => {}
            "/ui/logout" => posts.push((pattern, pattern.to_owned(), vec![])),
            "/ui/certificates" => posts.push((
                pattern,
                pattern.to_owned(),
                vec![
                    ("name", "ui-forged".to_owned()),
                    ("common_name", "forged.ui.test".to_owned()),
                    ("issuer_id", f.issuer.clone()),
                ],
            )),
            "/ui/certificates/{id}/{action}" => {
                for action in ["renew", "revoke", "disable", "enable"] {
                    posts.push((
                        pattern,
                        format!("/ui/certificates/{}/{action}", f.cert),
                        vec![("reason", "key-compromise".to_owned())],
                    ));
                }
            }
            "/ui/jobs/{id}/{action}" => {
                for action in ["retry", "cancel"] {
                    posts.push((
                        pattern,
                        format!("/ui/jobs/{}/{action}?back=%2Fui%2Fjobs", f.job),
                        vec![],
                    ));
                }
            }
            "/ui/agents/{id}/retire" => {
                posts.push((pattern, format!("/ui/agents/{}/retire", f.agent), vec![]))
            }
            other => panic!("the dashboard has a new form route {other}: add it to form_posts"),
        }
    }
    posts
}

/// Whether `path` (no query) is an instance of route `pattern`.
fn matches_route(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    p.len() == s.len()
        && p.iter()
            .zip(&s)
            .all(|(p, s)| (p.starts_with('{') && !s.is_empty()) || p == s)
}

/// The actions of every `method="post"` form in a page.
fn post_actions(html: &str) -> Vec<String> {
    html.split("<form")
        .skip(1)
        .filter_map(|rest| {
            let tag = rest.split('>').next()?;
            if !tag.contains("method=\"post\"") {
                return None;
            }
            let action = tag.split("action=\"").nth(1)?.split('"').next()?;
            Some(action.replace("&amp;", "&"))
        })
        .collect()
}

/// Every form action on every page, as `who` sees them.
async fn forms_on_pages(app: &TestApp, who: &Signed, f: &Fixture) -> Vec<String> {
    let mut actions = Vec::new();
    for path in PAGES {
        let path = path.replace("{cert}", &f.cert);
        let reply = page(app, &path, &who.cookie).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        actions.extend(post_actions(&reply.text));
    }
    actions
}

async fn session_cookie_is_http_only_secure_and_strict(backend: Backend) {
    let app = TestApp::new(backend).await;
    let (_, token, form) = login_form(&app).await;
    assert!(!token.is_empty());
    assert_guarded_cookie(set_cookie(&form, LOGIN).unwrap(), 600);

    let signed = sign_in(&app, &app.operator).await;
    let line = set_cookie(&signed.reply, SESSION).unwrap();
    assert_guarded_cookie(line, SESSION_HOURS * 3600);
    // The key travels sealed: neither it nor the CSRF token is readable
    // in the cookie.
    let (sealed, _) = parse_cookie(line);
    assert!(!sealed.contains(&app.operator), "{sealed}");
    assert!(!sealed.contains(&signed.csrf), "{sealed}");
    // Signing in spends the sign-in form's token.
    let spent = set_cookie(&signed.reply, LOGIN).expect("the login cookie is cleared");
    assert_guarded_cookie(spent, 0);
    assert_eq!(parse_cookie(spent).0, "");

    // A tampered cookie is no session.
    let mut forged: Vec<char> = sealed.chars().collect();
    let i = forged.len() / 2;
    forged[i] = if forged[i] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    let r = page(&app, "/ui", &format!("{SESSION}={forged}")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/ui/login");

    // Signing out needs the token, and clears the cookie.
    let r = post(&app, "/ui/logout", Some(&signed.cookie), &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert!(
        set_cookie(&r, SESSION).is_none(),
        "refused: nothing cleared"
    );
    let r = post(
        &app,
        "/ui/logout",
        Some(&signed.cookie),
        &[("csrf", &signed.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    assert_eq!(location(&r), "/ui/login");
    let cleared = set_cookie(&r, SESSION).expect("the session cookie is cleared");
    assert_guarded_cookie(cleared, 0);
    assert_eq!(parse_cookie(cleared).0, "");
}

async fn sign_in_needs_the_login_cookie_and_its_token(backend: Backend) {
    let app = TestApp::new(backend).await;
    let (cookie, token, _) = login_form(&app).await;
    let (other_cookie, _, _) = login_form(&app).await;
    let with = |c: &str| format!("{LOGIN}={c}");
    let refused: [(&str, Option<String>, Option<&str>); 6] = [
        ("no cookie, no token", None, None),
        ("no cookie", None, Some(token.as_str())),
        ("no token", Some(with(&cookie)), None),
        ("a wrong token", Some(with(&cookie)), Some("forged")),
        (
            "another form's cookie",
            Some(with(&other_cookie)),
            Some(token.as_str()),
        ),
        ("an empty cookie and token", Some(with("")), Some("")),
    ];
    for (what, cookie, token) in refused {
        let mut form = vec![("api_key", app.admin.as_str())];
        if let Some(token) = token {
            form.push(("csrf", token));
        }
        let r = post(&app, "/ui/login", cookie.as_deref(), &form).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {}", r.text);
        assert!(set_cookie(&r, SESSION).is_none(), "{what}: no session");
    }
    // A good token with a key the API refuses: back to the form, no session.
    let r = post(
        &app,
        "/ui/login",
        Some(&with(&cookie)),
        &[("api_key", "cp_not-a-key"), ("csrf", &token)],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(location(&r).starts_with("/ui/login?error="), "{r:?}");
    assert!(set_cookie(&r, SESSION).is_none());
    // The right pair signs in.
    let r = post(
        &app,
        "/ui/login",
        Some(&with(&cookie)),
        &[("api_key", &app.admin), ("csrf", &token)],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    assert_eq!(location(&r), "/ui");
    assert!(set_cookie(&r, SESSION).is_some());
}

async fn every_form_post_needs_the_csrf_token(backend: Backend) {
    let app = TestApp::new(backend).await;
    let f = fixture(&app).await;
    let admin = sign_in(&app, &app.admin).await;
    let other = sign_in(&app, &app.admin).await;
    assert_ne!(admin.csrf, other.csrf, "each session has its own token");

    // Every form the pages show posts to a route the dashboard lists
    // (so the list, and the posts below, cover them all).
    let actions = forms_on_pages(&app, &admin, &f).await;
    for action in &actions {
        let path = action.split('?').next().unwrap();
        assert!(
            FORM_ROUTES.iter().any(|p| matches_route(p, path)),
            "form action {action} is not in ui::FORM_ROUTES"
        );
    }
    for expected in [
        "/ui/logout",
        "/ui/certificates",
        "/ui/certificates/{id}/{action}",
        "/ui/jobs/{id}/{action}",
        "/ui/agents/{id}/retire",
    ] {
        assert!(
            actions
                .iter()
                .any(|a| matches_route(expected, a.split('?').next().unwrap())),
            "no form posts to {expected}: {actions:?}"
        );
    }

    let before = state_of(&app, &f).await;
    let posts = form_posts(&f);
    for (pattern, path, fields) in &posts {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut forged = fields.clone();
        forged.push(("csrf", "forged"));
        let mut foreign = fields.clone();
        foreign.push(("csrf", &other.csrf));
        let mut empty = fields.clone();
        empty.push(("csrf", ""));
        for (what, form) in [
            ("no token", &fields),
            ("a wrong token", &forged),
            ("another session's token", &foreign),
            ("an empty token", &empty),
        ] {
            let r = post(&app, path, Some(&admin.cookie), form).await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{pattern} ({path}) with {what}: {}",
                r.text
            );
            assert!(r.text.contains("CSRF"), "{path}: {}", r.text);
            assert!(set_cookie(&r, SESSION).is_none(), "{path}: {what}");
        }
        // Without a session at all: to the sign-in form.
        let mut with_token = fields.clone();
        with_token.push(("csrf", &admin.csrf));
        let r = post(&app, path, None, &with_token).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}: {}", r.text);
        assert_eq!(location(&r), "/ui/login", "{path}");
    }
    assert_eq!(state_of(&app, &f).await, before, "nothing changed");

    // The same posts with the token do what they say (so the refusals
    // above were the token's doing, not a bad form).
    let created = post(
        &app,
        "/ui/certificates",
        Some(&admin.cookie),
        &[
            ("name", "ui-made"),
            ("common_name", "made.ui.test"),
            ("issuer_id", &f.issuer),
            ("csrf", &admin.csrf),
        ],
    )
    .await;
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.text);
    assert!(
        location(&created).contains("notice="),
        "{}",
        location(&created)
    );
    for action in ["disable", "enable"] {
        let r = post(
            &app,
            &format!("/ui/certificates/{}/{action}", f.cert),
            Some(&admin.cookie),
            &[("csrf", &admin.csrf)],
        )
        .await;
        assert!(location(&r).contains("notice="), "{action}: {r:?}");
    }
    let r = post(
        &app,
        &format!("/ui/jobs/{}/cancel?back=%2Fui%2Fjobs", f.job),
        Some(&admin.cookie),
        &[("csrf", &admin.csrf)],
    )
    .await;
    assert!(location(&r).starts_with("/ui/jobs?notice="), "{r:?}");
    let r = post(
        &app,
        &format!("/ui/agents/{}/retire", f.agent),
        Some(&admin.cookie),
        &[("csrf", &admin.csrf)],
    )
    .await;
    assert!(location(&r).contains("notice="), "{r:?}");
    let after = state_of(&app, &f).await;
    assert_eq!(after["job_status"], "cancelled", "{after}");
    assert_eq!(after["agent_status"], "retired", "{after}");
    assert_eq!(
        after["certificates"],
        before["certificates"].as_u64().unwrap() + 1
    );
}

async fn read_only_sessions_change_nothing(backend: Backend) {
    let app = TestApp::new(backend).await;
    let f = fixture(&app).await;
    let reader = sign_in(&app, &app.reader).await;
    // The pages offer a read-only key nothing but signing out.
    let actions = forms_on_pages(&app, &reader, &f).await;
    assert!(!actions.is_empty());
    assert!(
        actions.iter().all(|a| a == "/ui/logout"),
        "write controls for a read-only key: {actions:?}"
    );

    let before = state_of(&app, &f).await;
    let audited = audit_total(&app).await;
    for (pattern, path, fields) in form_posts(&f) {
        if pattern == "/ui/logout" {
            continue;
        }
        let mut form: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        form.push(("csrf", &reader.csrf));
        let r = post(&app, &path, Some(&reader.cookie), &form).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text);
        assert!(r.text.contains("read only"), "{path}: {}", r.text);
    }
    assert_eq!(state_of(&app, &f).await, before, "nothing changed");
    assert_eq!(audit_total(&app).await, audited, "nothing audited");
    // Signing out is no change: a read-only key may.
    let r = post(
        &app,
        "/ui/logout",
        Some(&reader.cookie),
        &[("csrf", &reader.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
}

async fn revoked_or_expired_key_ends_the_session_at_once(backend: Backend) {
    let app = TestApp::new(backend).await;
    let f = fixture(&app).await;
    let made = app
        .post(
            "/api/v1/api-keys",
            &app.admin,
            json!({ "name": "ui-operator", "scope": "operator" }),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let key_id = made.json["id"].as_str().unwrap().to_owned();
    let key = made.json["secret"].as_str().unwrap().to_owned();
    let signed = sign_in(&app, &key).await;
    for path in PAGES {
        let path = path.replace("{cert}", &f.cert);
        let r = page(&app, &path, &signed.cookie).await;
        assert_eq!(r.status, StatusCode::OK, "{path} before revocation");
    }

    let r = app
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{key_id}"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_session_over(&app, &signed, &f).await;
    // Nor can the revoked key sign in again.
    let (cookie, token, _) = login_form(&app).await;
    let r = post(
        &app,
        "/ui/login",
        Some(&format!("{LOGIN}={cookie}")),
        &[("api_key", &key), ("csrf", &token)],
    )
    .await;
    assert!(location(&r).starts_with("/ui/login?error="), "{r:?}");
    assert!(set_cookie(&r, SESSION).is_none());

    // A key that expires while its session is open.
    let (short, hash) = certplane_host::api::auth::new_api_key();
    app.store
        .create_api_key(NewApiKey {
            name: "ui-short".into(),
            key_hash: hash,
            scopes: vec![ApiScope::Admin],
            expires_at: Some(Utc::now() + Duration::hours(1)),
        })
        .await
        .unwrap();
    let signed = sign_in(&app, &short).await;
    exec(
        &app.store,
        "UPDATE api_keys SET expires_at = created_at WHERE name = 'ui-short'",
    )
    .await;
    assert_session_over(&app, &signed, &f).await;
}

/// Every page and every write of `signed` goes to the sign-in form, and
/// the write changed nothing.
async fn assert_session_over(app: &TestApp, signed: &Signed, f: &Fixture) {
    for path in PAGES {
        let path = path.replace("{cert}", &f.cert);
        let r = page(app, &path, &signed.cookie).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}: {}", r.text);
        assert_eq!(location(&r), "/ui/login", "{path}");
    }
    let before = state_of(app, f).await;
    let r = post(
        app,
        &format!("/ui/certificates/{}/disable", f.cert),
        Some(&signed.cookie),
        &[("csrf", &signed.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    assert_eq!(location(&r), "/ui/login");
    assert_eq!(state_of(app, f).await, before);
}

async fn pages_never_carry_a_secret(backend: Backend) {
    let app = TestApp::new(backend).await;
    let f = fixture(&app).await;
    let (_, ca_key) = test_ca();
    // The base64 body of the CA key the fixture's issuer holds as a secret.
    let key_body: String = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
    let key_line = ca_key
        .lines()
        .find(|l| !l.starts_with("-----"))
        .unwrap()
        .to_owned();
    let admin = sign_in(&app, &app.admin).await;
    let connectors = page(&app, "/ui/connectors", &admin.cookie).await;
    assert_eq!(connectors.status, StatusCode::OK);
    assert!(
        connectors.text.contains("ca_private_key_pem"),
        "the secret's name is shown"
    );
    assert!(connectors.text.contains("ui-ca"));
    for path in PAGES {
        let path = path.replace("{cert}", &f.cert);
        let r = page(&app, &path, &admin.cookie).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        for (what, secret) in [
            ("the CA key", key_line.as_str()),
            ("the CA key", key_body.as_str()),
            ("a private key", "PRIVATE KEY"),
            ("the signed-in API key", app.admin.as_str()),
            ("another API key", app.operator.as_str()),
        ] {
            assert!(!r.text.contains(secret), "{what} in {path}");
        }
        assert_eq!(
            r.headers
                .get(header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok()),
            Some("no-store"),
            "{path} may be cached"
        );
    }
}

/// A mistyped dashboard address gets the dashboard's HTML 404, signed in
/// or not, not the API's JSON envelope.
async fn an_unknown_page_is_an_html_404(backend: Backend) {
    let app = TestApp::new(backend).await;
    let admin = sign_in(&app, &app.admin).await;
    for cookie in [Some(admin.cookie.as_str()), None] {
        for path in ["/ui/no-such-page", "/ui/certificates/x/y/z"] {
            let r = request(&app, Method::GET, path, cookie, None).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text);
            let content_type = r
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(
                content_type.starts_with("text/html"),
                "{path}: {content_type}"
            );
            assert!(r.text.contains("no such page"), "{path}: {}", r.text);
        }
    }
}
