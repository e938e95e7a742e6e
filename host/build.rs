//! Rebuilds the host when a migration file is added, edited or removed:
//! `sqlx::migrate!` embeds `migrations/` at compile time but cannot tell
//! cargo to watch a directory, so a new migration would otherwise be left
//! out of an incremental build.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
