//! `certplane-agent`: runs target connectors on the machines that serve
//! TLS. This first version verifies the plugins an agent would run; the
//! registration, work loop and deployments come with the agent issue.

use std::path::PathBuf;
use std::process::ExitCode;

use certplane_runtime::{Runtime, RuntimeConfig};
use clap::{Parser, Subcommand};

/// certplane agent.
#[derive(Debug, Parser)]
#[command(name = "certplane-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load every plugin in a directory through the sandbox runtime and list
    /// what loaded (name, kind, version, digest) and what did not, and why.
    Plugins {
        /// Directory of packaged plugins (`*.toml` + `*.wasm`).
        #[arg(long, default_value = "target/plugins")]
        dir: PathBuf,
    },
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Plugins { dir } => {
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
            Ok(failed.is_empty())
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
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
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("certplane-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
