//! `certplane-agent`: runs target connectors on the machines that serve
//! TLS. See the crate documentation of `certplane_agent`.

use std::path::PathBuf;
use std::process::ExitCode;

use certplane_agent::state::StateDir;
use certplane_agent::{AgentConfig, Mode};
use certplane_runtime::{Runtime, RuntimeConfig};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

/// certplane agent: registers with a certplane host, generates private keys
/// locally, deploys certificates through target connectors and verifies
/// them on the wire.
///
/// Without a subcommand it runs until stopped (SIGTERM/Ctrl-C) or retired
/// by the host (then it exits 0).
#[derive(Debug, Parser)]
#[command(name = "certplane-agent", version, about, long_about)]
struct Cli {
    /// Configuration file (TOML); `CERTPLANE_AGENT_*` variables override it
    /// (`__` separates nested keys, e.g. CERTPLANE_AGENT_TRUST__PIN_SHA256).
    #[arg(long, short, env = "CERTPLANE_AGENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Run one heartbeat + poll + execute cycle, then exit (for cron and tests).
    #[arg(long)]
    once: bool,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the registration and last-contact state from the state
    /// directory (does not contact the host).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compile the configured plugins into the agent's cache and exit (the
    /// agent runs this in a child process before it starts).
    #[command(hide = true)]
    Precompile,
    /// Load every plugin in a directory through the sandbox runtime and list
    /// what loaded (name, kind, version, digest) and what did not, and why.
    Plugins {
        /// Directory of packaged plugins (`*.toml` + `*.wasm`).
        #[arg(long, default_value = "target/plugins")]
        dir: PathBuf,
    },
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => {
            let config = AgentConfig::load(cli.config.as_deref())?;
            let mode = if cli.once {
                Mode::Once
            } else {
                Mode::Continuous
            };
            precompile_in_child(cli.config.as_deref(), cli.log_format).await;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            let exit = certplane_agent::run(config, mode, shutdown).await?;
            tracing::info!(?exit, "agent stopped");
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Precompile) => {
            let config = AgentConfig::load(cli.config.as_deref())?;
            let loaded = certplane_agent::runner::precompile(&config).await?;
            tracing::debug!(loaded, "plugins compiled into the cache");
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Status { json }) => {
            let config = AgentConfig::load(cli.config.as_deref())?;
            status(&config, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Plugins { dir }) => {
            let runtime = Runtime::new(RuntimeConfig::default())?;
            let (loaded, failed) = runtime.load_dir(&dir).await?;
            for plugin in &loaded {
                println!(
                    "{:<9} {:<16} {:<8} sha256 {}",
                    plugin.kind().as_str(),
                    plugin.name(),
                    plugin.version(),
                    plugin.sha256()
                );
            }
            for err in &failed {
                println!("FAILED    {err}");
            }
            Ok(if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Fills the plugin cache in a child process, so that this long-running
/// process only ever loads compiled plugins (idle RSS after a first start:
/// 24.6 MiB when compiling here, the warm 14 MiB this way). A child that
/// fails is logged; this process then compiles what it needs itself.
async fn precompile_in_child(config: Option<&std::path::Path>, log_format: LogFormat) {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut child = std::process::Command::new(exe);
    if let Some(path) = config {
        child.arg("--config").arg(path);
    }
    let format = match log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    child
        .args(["--log-format", format, "precompile"])
        .stdin(std::process::Stdio::null());
    match tokio::task::spawn_blocking(move || child.status()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => tracing::warn!(%status, "compiling plugins in a child process failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot start the plugin-compiling child process"),
        Err(e) => tracing::warn!(error = %e, "the plugin-compiling child process was lost"),
    }
}

fn status(config: &AgentConfig, json: bool) -> anyhow::Result<()> {
    // Read only: a mistyped --config must not create directories.
    let state = StateDir::existing(&config.state_dir);
    let credential = state
        .as_ref()
        .map(StateDir::credential)
        .transpose()?
        .flatten();
    let status = state
        .as_ref()
        .map(StateDir::status)
        .transpose()?
        .unwrap_or_default();
    if json {
        let value = serde_json::json!({
            "registered": credential.is_some(),
            "agent_id": credential.as_ref().map(|c| &c.agent_id),
            "host_url": credential.as_ref().map(|c| &c.host_url).unwrap_or(&config.host_url),
            "registered_at": credential.as_ref().map(|c| c.registered_at),
            "last_contact": status.last_contact,
            "last_error": status.last_error,
            "last_error_at": status.last_error_at,
            "jobs_done": status.jobs_done,
            "retired_at": status.retired_at,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let or_never = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never".into())
    };
    match &credential {
        Some(c) => {
            println!("registered:    yes, agent {}", c.agent_id);
            println!("host:          {}", c.host_url);
            println!("registered at: {}", c.registered_at.to_rfc3339());
        }
        None => {
            println!("registered:    no");
            println!("host:          {}", config.host_url);
        }
    }
    println!("last contact:  {}", or_never(status.last_contact));
    if let Some(err) = &status.last_error {
        println!(
            "last error:    {} ({})",
            err,
            or_never(status.last_error_at)
        );
    }
    println!("jobs done:     {}", status.jobs_done);
    if let Some(at) = status.retired_at {
        println!("RETIRED:       by the host at {}", at.to_rfc3339());
    }
    match &state {
        Some(state) => println!("state dir:     {}", state.root().display()),
        None => println!(
            "state dir:     {} (does not exist yet)",
            config.state_dir.display()
        ),
    }
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal: in a journal, a file or a log
    // collector they are noise that breaks searching.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    // The agent mostly waits on the network: one worker thread is plenty
    // and keeps the idle footprint small.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("certplane-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("certplane-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
