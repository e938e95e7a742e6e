//! The local `certplane apikey` command, run on the host's own database
//! without a server (the first admin key, scripts).

use std::process::{Command, Stdio};

/// `certplane apikey create` (on the host's own database, no server):
/// `--expires-in-days` sets the key's expiry, said in the output; out of
/// range is refused by the parser and creates nothing.
#[tokio::test]
async fn local_apikey_create_sets_the_expiry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/keys.db?mode=rwc", dir.path().display());
    let config = dir.path().join("certplane.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\ndatabase_url = {url:?}\n",
            dir.path().join("data")
        ),
    )
    .expect("config written");
    let create = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_certplane"))
            .arg("--config")
            .arg(&config)
            .args([
                "apikey",
                "create",
                "--name",
                "expiring",
                "--scope",
                "read_only",
            ])
            .args(extra)
            .env_remove("CERTPLANE_CONFIG")
            .stdin(Stdio::null())
            .output()
            .expect("certplane runs")
    };
    let refused = create(&["--expires-in-days", "0"]);
    assert!(!refused.status.success(), "{refused:?}");
    let output = create(&["--expires-in-days", "7"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("expires 20"), "{stdout}");
    let key = stdout
        .split_whitespace()
        .find(|w| w.starts_with("cpk_"))
        .expect("the key is printed");

    let store = certplane_host::store::Store::connect(&url)
        .await
        .expect("store");
    let stored = store
        .find_api_key_by_hash(&certplane_host::api::auth::hash_token(key))
        .await
        .expect("read")
        .expect("the printed key is stored");
    let (_, total) = store
        .list_api_keys(None, chrono::Utc::now(), 0, 10)
        .await
        .expect("list");
    assert_eq!(total, 1, "the refused create stored nothing");
    let expires = stored.expires_at.expect("an expiry");
    let days = (expires - chrono::Utc::now()).num_seconds() as f64 / 86_400.0;
    assert!((6.99..=7.0).contains(&days), "expires in {days} days");
    store.close().await;
}
