//! An in-process API harness: a migrated store on the chosen backend, the
//! packaged plugins, API keys of every scope, and a way to send requests
//! through the real router (middleware included) without a socket.

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

use crate::{Backend, TestDb, plugin_cache_dir, plugin_dir, test_ca};

/// Bootstrap token configured in every test app.
pub const BOOTSTRAP: &str = "test-bootstrap-token";

/// One response, body parsed as JSON (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Reply {
    /// The `ETag` header; panics (a test failure) when there is none.
    pub fn etag(&self) -> String {
        self.headers
            .get("etag")
            .unwrap_or_else(|| panic!("no ETag on {}: {}", self.status, self.text))
            .to_str()
            .unwrap()
            .to_owned()
    }
}

/// A migrated store on one backend, the packaged plugins, the API's state
/// and router, and API keys of every scope.
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
    /// A test app on `backend` with the default configuration.
    pub async fn new(backend: Backend) -> TestApp {
        Self::with_config(backend, |_| {}).await
    }

    /// A test app whose configuration `edit` adjusts first.
    pub async fn with_config(backend: Backend, edit: impl FnOnce(&mut HostConfig)) -> TestApp {
        let db = TestDb::new(backend).await;
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = HostConfig {
            data_dir: data.path().to_path_buf(),
            plugin_dir: plugin_dir(),
            ..HostConfig::default()
        };
        config.agents.bootstrap_tokens = vec![BOOTSTRAP.to_string()];
        edit(&mut config);
        // The store's leases last what the configuration says, as in a host.
        let store = db
            .store_with(certplane_host::store::StoreOptions {
                lease_duration: std::time::Duration::from_secs(config.jobs.lease_secs),
                ..crate::db::test_options()
            })
            .await;
        store.migrate().await.expect("migrate");
        let plugins = PluginRegistry::load_with(
            &config.plugin_dir,
            Some(&plugin_cache_dir()),
            &config.limits,
        )
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

    /// `GET path` with a bearer token.
    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// `GET path` with a bearer token and `If-None-Match: tag`.
    pub async fn get_if_none_match(&self, path: &str, token: &str, tag: &str) -> Reply {
        let request = Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("if-none-match", tag)
            .body(Body::empty())
            .unwrap();
        self.send(request).await
    }

    /// `POST path` with a bearer token and a JSON body.
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

/// An issuer instance of `plugin` (local-ca or a fixture that reuses it)
/// signing with a fresh test CA: `extra` settings are merged over the CA
/// settings and the CA key is sealed for `issuer/<id>`, as the API stores it.
pub async fn ca_issuer(
    state: &AppState,
    plugin: &str,
    extra: serde_json::Value,
) -> certplane_host::store::PluginInstance {
    use certplane_host::store::NewPluginInstance;
    let (ca_cert, ca_key) = test_ca();
    let mut settings = serde_json::json!({ "ca_certificate_pem": ca_cert, "validity_days": 30 });
    if let Some(extra) = extra.as_object() {
        for (k, v) in extra {
            settings[k] = v.clone();
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    let sealed = state
        .secrets
        .seal_map(
            &std::collections::BTreeMap::from([("ca_private_key_pem".to_string(), ca_key)]),
            &format!("issuer/{id}"),
        )
        .expect("seal");
    state
        .store
        .create_issuer_with_id(
            &id,
            NewPluginInstance {
                settings,
                encrypted_secrets: Some(sealed.into_bytes()),
                ..NewPluginInstance::new(format!("{plugin}-{id}"), plugin, "0.1.0")
            },
        )
        .await
        .expect("issuer")
}
