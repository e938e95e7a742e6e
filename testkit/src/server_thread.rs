//! An axum [`Router`] served on a loopback port from a dedicated OS thread
//! with its own current-thread Tokio runtime, until dropped.
//!
//! The fakes ([`crate::fake_ca`], [`crate::fake_digicert`],
//! [`crate::fake_sectigo`], [`crate::fake_cloudflare`], [`crate::fake_ari`])
//! run this way so they keep answering while the test blocks, whatever
//! runtime (if any) the test uses. A fake [`bind`](ServerThread::bind)s
//! first, since its state usually needs the address, then
//! [`spawn`](ServerThread::spawn)s its router and keeps the
//! [`ServerThread`] among its fields:
//!
//! ```no_run
//! use certplane_testkit::server_thread::ServerThread;
//! # fn t() -> std::io::Result<()> {
//! let listener = ServerThread::bind()?;
//! let addr = listener.local_addr()?;
//! let server = ServerThread::spawn("fake thing", listener, axum::Router::new())?;
//! assert_eq!(server.addr(), addr);
//! drop(server); // closes the port and every open connection
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;

use axum::Router;
use tokio::sync::oneshot;

/// A router being served on its own thread; dropping it stops the server
/// (closing the port and every open connection) and joins the thread.
pub struct ServerThread {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Binds `127.0.0.1:0` (a free loopback port), non-blocking, ready for
    /// [`ServerThread::spawn`].
    pub fn bind() -> io::Result<TcpListener> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// Serves `router` on `listener` (from [`ServerThread::bind`]) on a new
    /// thread with its own current-thread runtime.
    ///
    /// `name` is what the server is called in the logs (`fake CA`: "fake CA
    /// cannot listen: ...", "fake CA stopped: ..."), and, in lower case with
    /// dashes for spaces and the port appended, the thread's name
    /// (`fake-ca-PORT`). Fails when the listener has no address or the
    /// runtime or thread cannot be made.
    pub fn spawn(name: &str, listener: TcpListener, router: Router) -> io::Result<ServerThread> {
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = oneshot::channel::<()>();
        let label = name.to_string();
        let thread = std::thread::Builder::new()
            .name(format!(
                "{}-{}",
                name.to_lowercase().replace(' ', "-"),
                addr.port()
            ))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("{label} cannot listen: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        result = axum::serve(listener, router) => {
                            if let Err(e) = result {
                                tracing::error!("{label} stopped: {e}");
                            }
                        }
                        _ = rx => {}
                    }
                });
                // Dropping the runtime here cancels every connection task,
                // sleeping ones (the fake CA's delayed polls) included.
                drop(runtime);
            })?;
        Ok(ServerThread {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address served, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Quick: the server thread only has to drop its runtime.
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for ServerThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerThread")
            .field("addr", &self.addr)
            .finish()
    }
}
