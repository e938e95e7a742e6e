//! Where connector code runs: guest code executes on its own tokio runtime
//! ("certplane-plugin" threads), never on the workers that serve the API,
//! claim jobs and commit outcomes.
//!
//! Why: a busy guest yields its worker only at epoch ticks, so guests that
//! spin (to their deadline) or flood host calls would otherwise take turns
//! with every await of the control plane's own tasks on the same two
//! workers; good issuances were measured at 4-5x their unloaded latency
//! beside two such guests. On separate threads the kernel's scheduler
//! shares the cores preemptively, and the control plane's mostly idle
//! threads get them back at once.

use std::future::Future;

use certplane_runtime::CallError;
use tokio::runtime::{Builder, Handle, Runtime};
use tokio_util::task::AbortOnDropHandle;

/// The runtime that connector calls run on.
#[derive(Debug)]
pub struct PluginExec {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl PluginExec {
    /// A runtime with four workers per core (at least eight): guests that
    /// spin to their deadline occupy a worker each, and a good call must
    /// find an idle one rather than queue behind them; the kernel then
    /// shares the cores between the busy threads. Should the OS refuse the
    /// threads, calls run on the caller's runtime instead, with an error
    /// logged.
    pub fn new() -> Self {
        let threads = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(2)
            .saturating_mul(4)
            .max(8);
        match Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("certplane-plugin")
            .enable_all()
            .build()
        {
            Ok(runtime) => PluginExec {
                handle: runtime.handle().clone(),
                runtime: Some(runtime),
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot start the plugin threads; connector calls share the API's");
                PluginExec {
                    runtime: None,
                    handle: Handle::current(),
                }
            }
        }
    }

    /// Runs `call` there and waits for it. Dropping the returned future
    /// (a cancelled job, a timed-out request) aborts the call.
    pub async fn run<T, F>(&self, plugin: &str, call: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, CallError>> + Send + 'static,
    {
        let task = AbortOnDropHandle::new(self.handle.spawn(call));
        match task.await {
            Ok(result) => result,
            Err(e) => Err(CallError::Trap {
                plugin: plugin.to_owned(),
                message: format!("the call's task ended abnormally: {e}"),
            }),
        }
    }
}

impl Default for PluginExec {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PluginExec {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids inside another
        // runtime (an engine is dropped from async code); calls still
        // running are abandoned, as at any shutdown.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
