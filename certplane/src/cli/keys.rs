//! `certplane keys list|create|show|revoke`: operator API keys through the
//! API (an admin key is needed). `certplane apikey create` (the binary's
//! own command) still writes a key straight into the database, for the
//! first key of a host whose bootstrap key is lost.

use clap::Subcommand;
use serde_json::Value;

use super::output::{self, Column, col};
use super::{Ctx, PageArgs, query_of, seg};

/// `certplane keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// List API keys, newest first (revoked and expired ones included
    /// unless `--status` says otherwise). Never shows a key or its hash.
    List {
        #[command(flatten)]
        page: PageArgs,
        /// Only keys in this state.
        #[arg(long, value_parser = ["active", "expired", "revoked"])]
        status: Option<String>,
    },
    /// Create an API key; the key is printed this once.
    Create {
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// `admin`, `operator` or `read_only`.
        #[arg(long, value_parser = ["admin", "operator", "read_only"])]
        scope: String,
        /// Days until the key expires (default: never).
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..))]
        expires_in_days: Option<u32>,
    },
    /// Show one API key.
    Show {
        /// API key id.
        id: String,
    },
    /// Revoke an API key: refused from the next request on, still listed.
    /// The last active admin key cannot be revoked.
    Revoke {
        /// API key id.
        id: String,
    },
}

const KEY_COLUMNS: &[Column] = &[
    col("ID", "/id"),
    col("NAME", "/name"),
    col("SCOPE", "/scope"),
    col("STATUS", "/status"),
    col("PREFIX", "/key_prefix"),
    col("CREATED", "/created_at"),
    col("EXPIRES", "/expires_at"),
    col("LAST USED", "/last_used_at"),
];

/// The table form of a new key: its fields, then the key on a line of its
/// own with the warning that it is not shown again.
fn created(body: &Value) -> String {
    let mut out = output::fields(body, &["secret"]);
    out.push_str(&format!(
        "\nAPI key, shown once (only its hash is stored):\n  {}\n",
        output::cell(body.get("secret"))
    ));
    out
}

pub(super) async fn run(ctx: &Ctx, action: KeysAction) -> anyhow::Result<()> {
    match action {
        KeysAction::List { page, status } => {
            let q = query_of(&page, &[("status", status)]);
            ctx.list("/api-keys", &q, KEY_COLUMNS).await
        }
        KeysAction::Create {
            name,
            scope,
            expires_in_days,
        } => {
            let reply = ctx
                .client
                .create_api_key(&name, &scope, expires_in_days)
                .await?;
            ctx.show(reply, created);
            Ok(())
        }
        KeysAction::Show { id } => {
            let reply = ctx
                .client
                .get(&format!("/api-keys/{}", seg(&id)), &[])
                .await?;
            ctx.show_fields(reply, &[]);
            Ok(())
        }
        KeysAction::Revoke { id } => {
            let reply = ctx.client.revoke_api_key(&id).await?;
            ctx.show_fields(reply, &[]);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        action: KeysAction,
    }

    fn parse(args: &[&str]) -> Result<KeysAction, clap::Error> {
        Cli::try_parse_from(std::iter::once("keys").chain(args.iter().copied())).map(|c| c.action)
    }

    #[test]
    fn keys_commands_parse() {
        match parse(&[
            "create",
            "--name",
            "ci",
            "--scope",
            "read_only",
            "--expires-in-days",
            "30",
        ])
        .unwrap()
        {
            KeysAction::Create {
                name,
                scope,
                expires_in_days,
            } => {
                assert_eq!((name.as_str(), scope.as_str()), ("ci", "read_only"));
                assert_eq!(expires_in_days, Some(30));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["revoke", "k1"]).unwrap(),
            KeysAction::Revoke { id } if id == "k1"
        ));
        assert!(matches!(
            parse(&["list", "--status", "revoked", "--per-page", "5"]).unwrap(),
            KeysAction::List { status: Some(s), page } if s == "revoked" && page.per_page == Some(5)
        ));
        for bad in [
            &["create", "--name", "x", "--scope", "root"][..],
            &["create", "--name", "x"],
            &[
                "create",
                "--name",
                "x",
                "--scope",
                "admin",
                "--expires-in-days",
                "0",
            ],
            &["list", "--status", "gone"],
            &["show"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_new_key_is_printed_apart_from_its_fields() {
        let body = serde_json::json!({"id": "k1", "name": "ci", "secret": "cpk_abc"});
        let text = created(&body);
        assert!(text.contains("shown once"), "{text}");
        assert_eq!(text.matches("cpk_abc").count(), 1, "{text}");
    }
}
