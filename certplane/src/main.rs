//! `certplane`: the control-plane server and operator CLI.

use std::process::ExitCode;

use anyhow::Context;
use std::path::PathBuf;

use certplane_host::config::{HostConfig, LogFormat};
use certplane_host::store::{ApiScope, MigrationStatus, NewApiKey, Store};
use clap::{Parser, Subcommand};
use tracing::info;

/// jemalloc rather than glibc's malloc: in the issuance bench glibc's malloc
/// and free were ~10 % of the host's CPU samples, and jemalloc gave +2–4 %
/// (PostgreSQL) and +5–8 % (SQLite) certificates a second; mimalloc did as
/// well there but took the 10,000-agent fleet to 598 MiB against jemalloc's
/// 471 MiB (the target is 512; BENCHMARKS.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// certplane control plane: certificate lifecycle with sandboxed
/// WebAssembly connectors.
#[derive(Debug, Parser)]
#[command(name = "certplane", version, about)]
struct Cli {
    /// Configuration file (TOML). `CERTPLANE_*` environment variables
    /// override it (nested keys joined with `__`).
    #[arg(long, global = true, env = "CERTPLANE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane: API, scheduler and connectors.
    Serve,
    /// Run the whole system on this machine: a host on embedded SQLite, an
    /// agent that generates the key and CSR, a local-CA issuer, a PEM-files
    /// deployment and on-the-wire verification against a local TLS server.
    Demo {
        /// Directory of packaged plugins.
        #[arg(long, default_value = "target/plugins")]
        plugin_dir: PathBuf,
        /// Keep the temporary data directory.
        #[arg(long)]
        keep: bool,
        /// Compiled-plugin cache kept across runs (a later run loads the
        /// plugins in milliseconds instead of compiling them).
        #[arg(long, default_value = "target/plugin-cache")]
        cache_dir: PathBuf,
    },
    /// Operator API keys.
    Apikey {
        #[command(subcommand)]
        action: ApikeyAction,
    },
    /// Database schema migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Operator commands against a running host's API.
    #[command(flatten)]
    Operator(Box<certplane::cli::Operator>),
}

#[derive(Debug, Subcommand)]
enum ApikeyAction {
    /// Create an API key; its plaintext is printed once.
    Create {
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// `admin`, `operator` or `read_only`.
        #[arg(long, default_value = "operator")]
        scope: ApiScope,
        /// Days until the key expires (default: never), as with
        /// `certplane keys create` through the API.
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=3660))]
        expires_in_days: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum MigrateAction {
    /// Show embedded migrations and whether each is applied.
    Status {
        /// sqlite://PATH?mode=rwc or postgres://USER@HOST:PORT/DATABASE
        #[arg(long, env = "CERTPLANE_DATABASE_URL")]
        database_url: String,
    },
    /// Apply pending migrations (serialised across processes).
    Apply {
        /// sqlite://PATH?mode=rwc or postgres://USER@HOST:PORT/DATABASE
        #[arg(long, env = "CERTPLANE_DATABASE_URL")]
        database_url: String,
    },
}

fn print_status(status: &MigrationStatus) {
    println!("backend: {}", status.backend);
    println!(
        "{:<8} {:<34} {:<26} INSTALLED",
        "VERSION", "DESCRIPTION", "STATE"
    );
    for e in &status.entries {
        let installed = e
            .installed_on
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<8} {:<34} {:<26} {}",
            e.version,
            e.description,
            e.state.to_string(),
            installed
        );
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => {
            let config = HostConfig::load(cli.config.as_deref())?;
            certplane_host::serve::run(config).await?;
        }
        Command::Demo {
            plugin_dir,
            keep,
            cache_dir,
        } => {
            certplane::demo::run(certplane::demo::DemoOptions {
                plugin_dir,
                keep,
                cache_dir: Some(cache_dir),
            })
            .await?;
        }
        Command::Apikey {
            action:
                ApikeyAction::Create {
                    name,
                    scope,
                    expires_in_days,
                },
        } => {
            let expires_at = expires_in_days
                .map(|days| chrono::Utc::now() + chrono::Duration::days(i64::from(days)));
            let config = HostConfig::load(cli.config.as_deref())?;
            certplane_host::serve::prepare_data_dir(&config.data_dir)?;
            let store = certplane_host::serve::open_store(&config).await?;
            let (key, hash) = certplane_host::api::auth::new_api_key();
            store
                .create_api_key(NewApiKey {
                    name: name.clone(),
                    key_hash: hash,
                    scopes: vec![scope],
                    expires_at,
                })
                .await?;
            store.close().await;
            match expires_at {
                Some(at) => println!(
                    "API key {name} ({scope}, expires {}), shown once:\n  {key}",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                None => println!("API key {name} ({scope}), shown once:\n  {key}"),
            }
        }
        Command::Migrate { action } => match action {
            MigrateAction::Status { database_url } => {
                let store = Store::connect(&database_url).await?;
                let status = store.migration_status().await?;
                print_status(&status);
                store.close().await;
                status.check().or_else(|e| match e {
                    // Pending migrations are what `status` is for: not an error.
                    certplane_host::store::StoreError::SchemaOutdated { .. } => Ok(()),
                    other => Err(other),
                })?;
            }
            MigrateAction::Apply { database_url } => {
                let store = Store::connect(&database_url).await?;
                let report = store.migrate().await.context("migration refused")?;
                if report.applied.is_empty() {
                    info!("database schema already up to date");
                } else {
                    info!(applied = ?report.applied, "migrations applied");
                }
                print_status(&store.migration_status().await?);
                store.close().await;
            }
        },
        Command::Operator(operator) => certplane::cli::run(*operator).await?,
    }
    Ok(())
}

/// The error chain on one line, skipping causes whose text the previous
/// message already contains (sqlx repeats its source in its message).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut last = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !last.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        last = text;
    }
    line
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own progress lines; keep library logs to warnings
    // there unless RUST_LOG asks for more. `serve` follows its configuration.
    let (default_level, json) = match &cli.command {
        // The demo's self-signed host certificate is expected; its warning
        // would only distract from the progress lines.
        Command::Demo { .. } => ("warn,certplane_host::tls=error".to_string(), false),
        Command::Serve => match HostConfig::load(cli.config.as_deref()) {
            Ok(c) => (c.log.level.clone(), c.log.format == LogFormat::Json),
            Err(_) => ("info".to_string(), false),
        },
        _ => ("info".to_string(), false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour codes only for a terminal: in a journal, a file or a log
    // collector they are noise that breaks searching.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what went wrong and how to fix it.
            tracing::error!("{}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}
