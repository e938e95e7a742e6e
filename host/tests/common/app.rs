//! An in-process API harness: a migrated store on the chosen backend, the
//! packaged plugins, API keys of every scope, and a way to send requests
//! through the real router (middleware included) without a socket.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use certplane_host::api::{self, AppState, auth};
use certplane_host::config::HostConfig;
use certplane_host::plugins::PluginRegistry;
use certplane_host::secrets::SecretBox;
use certplane_host::store::{ApiScope, NewApiKey, Store};
use serde_json::Value;
use tower::ServiceExt;

use super::{Backend, TestDb};

/// Bootstrap token configured in every test app.
pub const BOOTSTRAP: &str = "test-bootstrap-token";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Directory of the packaged plugins; panics with the fix when missing.
pub fn plugin_dir() -> PathBuf {
    let dir = repo_root().join("target/plugins");
    assert!(
        dir.join("local-ca.toml").exists(),
        "{} has no plugins: run scripts/build-plugins first",
        dir.display()
    );
    dir
}

/// A plugin directory with the packaged connectors plus the named test
/// fixtures from `target/test-plugins`.
pub fn plugin_dir_with_fixtures(fixtures: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let test_plugins = repo_root().join("target/test-plugins");
    let mut files: Vec<PathBuf> = std::fs::read_dir(plugin_dir())
        .expect("plugin dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    for name in fixtures {
        for ext in ["toml", "wasm"] {
            let f = test_plugins.join(format!("{name}.{ext}"));
            assert!(
                f.exists(),
                "{} is missing: run scripts/build-plugins first",
                f.display()
            );
            files.push(f);
        }
    }
    for f in files {
        if let Some(file_name) = f.file_name() {
            std::fs::copy(&f, dir.path().join(file_name)).expect("copy plugin");
        }
    }
    dir
}

/// One response, body parsed as JSON (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
    pub text: String,
}

pub struct TestApp {
    pub db: TestDb,
    pub store: Store,
    pub state: AppState,
    pub router: Router,
    pub admin: String,
    pub operator: String,
    pub reader: String,
    _data: tempfile::TempDir,
}

impl TestApp {
    pub async fn new(backend: Backend) -> TestApp {
        Self::with_config(backend, |_| {}).await
    }

    pub async fn with_config(backend: Backend, edit: impl FnOnce(&mut HostConfig)) -> TestApp {
        let db = TestDb::new(backend).await;
        let store = db.migrated().await;
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = HostConfig {
            data_dir: data.path().to_path_buf(),
            plugin_dir: plugin_dir(),
            ..HostConfig::default()
        };
        config.agents.bootstrap_tokens = vec![BOOTSTRAP.to_string()];
        edit(&mut config);
        // One compiled-plugin cache for every test process: artifacts are
        // written atomically, so concurrent tests share it safely.
        let cache = repo_root().join("target/test-plugin-cache");
        let plugins = PluginRegistry::load(&config.plugin_dir, Some(&cache))
            .await
            .expect("plugins load");
        let secrets = Arc::new(SecretBox::generate());
        let state = AppState::new(store.clone(), Arc::new(config), Arc::new(plugins), secrets);
        let router = api::router(state.clone());
        let mut app = TestApp {
            db,
            store,
            state,
            router,
            admin: String::new(),
            operator: String::new(),
            reader: String::new(),
            _data: data,
        };
        app.admin = app.api_key("admin", ApiScope::Admin).await;
        app.operator = app.api_key("operator", ApiScope::Operator).await;
        app.reader = app.api_key("reader", ApiScope::ReadOnly).await;
        app
    }

    /// Creates an API key with one scope and returns its plaintext.
    pub async fn api_key(&self, name: &str, scope: ApiScope) -> String {
        let (key, hash) = auth::new_api_key();
        self.store
            .create_api_key(NewApiKey {
                name: name.to_string(),
                key_hash: hash,
                scopes: vec![scope],
                expires_at: None,
            })
            .await
            .expect("api key");
        key
    }

    /// Sends a request through the router.
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = api::body_bytes(response.into_body()).await.expect("body");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
            text,
        }
    }

    /// `method path` with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(v) => {
                builder = builder.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(builder.body(body).expect("request")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }
}

/// Asserts the error envelope and returns the code.
pub fn error_code(reply: &Reply) -> String {
    let err = &reply.json["error"];
    assert!(
        err["code"].is_string() && err["message"].is_string() && err["request_id"].is_string(),
        "not an error envelope ({}): {}",
        reply.status,
        reply.text
    );
    assert_eq!(
        reply
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        err["request_id"].as_str(),
        "request id header and envelope differ"
    );
    err["code"].as_str().unwrap_or_default().to_string()
}
