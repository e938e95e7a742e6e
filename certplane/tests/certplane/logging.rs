//! The host binary's logs carry no ANSI colour codes when they do not go to
//! a terminal (a journal, a file, a log collector).

use std::process::{Command, Stdio};

#[test]
fn logs_off_a_terminal_have_no_colour_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/logs.db?mode=rwc", dir.path().display());
    let output = Command::new(env!("CARGO_BIN_EXE_certplane"))
        .args(["migrate", "apply", "--database-url", &url])
        .env("RUST_LOG", "info")
        .env_remove("CERTPLANE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("certplane runs");
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("migrations applied"), "{stderr}");
    assert!(!stderr.contains("\x1b["), "colour codes in {stderr:?}");
}
