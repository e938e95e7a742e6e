//! A test harness for connector authors: load a built component with given
//! settings and grants and call it, against a scripted local HTTP server,
//! without a certplane host or database.
//!
//! ```no_run
//! use certplane_runtime::harness::{Harness, TestResponse, TestServer};
//! use certplane_runtime::InstanceConfig;
//!
//! # async fn t() -> Result<(), Box<dyn std::error::Error>> {
//! // A stand-in for the upstream API, answering every request with JSON.
//! let server = TestServer::start(|req| {
//!     assert_eq!(req.header("x-api-key"), Some("k"));
//!     TestResponse::json(200, &serde_json::json!({"ok": true}))
//! })
//! .await?;
//! let harness = Harness::new()?;
//! let config = InstanceConfig::new("test")
//!     .with_settings(serde_json::json!({"base_url": server.url()}))?
//!     .with_secret("api_key", "k")
//!     // Loopback is reachable only because the grant names it explicitly.
//!     .with_hosts(&[server.grant()])?;
//! let instance = harness.instance("target/plugins/my-notifier.toml", config).await?;
//! instance.validate_config().await?;
//! assert_eq!(server.requests().len(), 1);
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::engine::{Runtime, RuntimeConfig};
use crate::error::{ConfigError, LoadError, RuntimeError};
use crate::instance::{InstanceConfig, PluginInstance};
use crate::plugin::Plugin;

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The runtime could not be created.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The plugin did not load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The instance configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Local I/O failed.
    #[error("harness I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A runtime set up for tests, with a private compiled-artifact cache.
#[derive(Debug)]
pub struct Harness {
    runtime: Runtime,
    _cache: tempfile::TempDir,
}

impl Harness {
    /// A harness with default runtime settings and a fresh cache directory.
    pub fn new() -> Result<Harness, HarnessError> {
        Harness::with_config(RuntimeConfig::default())
    }

    /// A harness with the given runtime settings; `cache_dir` is replaced by
    /// a temporary directory unless set.
    pub fn with_config(mut config: RuntimeConfig) -> Result<Harness, HarnessError> {
        let cache = tempfile::tempdir()?;
        if config.cache_dir.is_none() {
            config.cache_dir = Some(cache.path().to_path_buf());
        }
        Ok(Harness {
            runtime: Runtime::new(config)?,
            _cache: cache,
        })
    }

    /// The underlying runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Loads the plugin described by `manifest`.
    pub async fn load(&self, manifest: impl AsRef<Path>) -> Result<Arc<Plugin>, HarnessError> {
        Ok(self.runtime.load_plugin(manifest.as_ref()).await?)
    }

    /// Loads the plugin and binds it to `config`.
    pub async fn instance(
        &self,
        manifest: impl AsRef<Path>,
        config: InstanceConfig,
    ) -> Result<PluginInstance, HarnessError> {
        let plugin = self.load(manifest).await?;
        Ok(PluginInstance::new(plugin, config)?)
    }
}

/// A request the [`TestServer`] received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method, upper-case.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lower-case, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A scripted response of the [`TestServer`].
#[derive(Debug, Clone)]
pub struct TestResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl TestResponse {
    /// A response with a JSON body.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        TestResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    /// A response with a plain-text body.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        TestResponse {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.into().into_bytes(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = dyn Fn(&RecordedRequest) -> TestResponse + Send + Sync;

/// A local HTTP/1.1 server on 127.0.0.1 that answers every request with
/// what a handler returns and records what it received. Stops when dropped.
pub struct TestServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl TestServer {
    /// Starts the server on an ephemeral port.
    pub async fn start<F>(handler: F) -> std::io::Result<TestServer>
    where
        F: Fn(&RecordedRequest) -> TestResponse + Send + Sync + 'static,
    {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let handler: Arc<Handler> = Arc::new(handler);
        let (log, token) = (requests.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = token.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let (handler, log) = (handler.clone(), log.clone());
                let token = token.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| serve(req, handler.clone(), log.clone()));
                    let conn =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        Ok(TestServer {
            addr,
            requests,
            stop,
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The host grant that lets a plugin reach this server.
    pub fn grant(&self) -> String {
        self.url()
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    req: hyper::Request<hyper::body::Incoming>,
    handler: Arc<Handler>,
    log: Arc<Mutex<Vec<RecordedRequest>>>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let response = handler(&recorded);
    log.lock().unwrap_or_else(|p| p.into_inner()).push(recorded);
    let mut builder = hyper::Response::builder().status(response.status);
    for (k, v) in &response.headers {
        builder = builder.header(k, v);
    }
    Ok(builder
        .body(Full::new(Bytes::from(response.body)))
        .unwrap_or_else(|_| {
            let mut r =
                hyper::Response::new(Full::new(Bytes::from_static(b"bad scripted response")));
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            r
        }))
}
