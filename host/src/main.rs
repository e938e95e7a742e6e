//! `certplane`: the control-plane server and operator CLI.

use std::process::ExitCode;

use anyhow::Context;
use certplane_host::store::{MigrationStatus, Store};
use clap::{Parser, Subcommand};
use tracing::info;

/// certplane control plane.
#[derive(Debug, Parser)]
#[command(name = "certplane", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Database schema migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
