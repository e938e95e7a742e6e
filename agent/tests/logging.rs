//! The agent's logs carry no ANSI colour codes when they do not go to a
//! terminal (a journal, a file, a log collector).

use std::process::{Command, Stdio};

// The agent's one test binary: further modules live under `logging/`.
#[path = "logging/grant_symlinks.rs"]
mod grant_symlinks;

#[test]
fn logs_off_a_terminal_have_no_colour_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    let config = dir.path().join("agent.toml");
    // Nothing listens on port 1: the agent logs its start-up, then fails
    // to register and exits.
    std::fs::write(
        &config,
        format!(
            "host_url = \"http://127.0.0.1:1\"\nbootstrap_token = \"t\"\n\
             state_dir = {:?}\nplugin_dir = {:?}\n",
            dir.path().join("state"),
            plugins
        ),
    )
    .expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_certplane-agent"))
        .arg("--config")
        .arg(&config)
        .arg("--once")
        .env("RUST_LOG", "info")
        .env_remove("CERTPLANE_AGENT_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("certplane-agent runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("target plugins loaded"), "{stderr}");
    assert!(!stderr.contains("\x1b["), "colour codes in {stderr:?}");
}
