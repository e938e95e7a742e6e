//! Named actions (contract 1.1 `actions`): commands the operator defined in
//! the agent's or host's own configuration and granted to a target
//! instance by name. The guest names an action; argv, timeout and
//! environment come only from the [`ActionSpec`] the operator wrote. The
//! command runs without a shell, with a cleared environment plus the
//! spec's variables, standard input closed, and each output stream cut to
//! its last [`MAX_OUTPUT_BYTES`]. It is killed when it outlives its timeout
//! or the call's deadline, or when the call is dropped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::bindings::target::certplane::connector::actions;
use crate::bindings::types::ConnectorError;
use crate::call_state::CallState;
use crate::error::ConfigError;

/// Most bytes of each output stream handed back (the last ones: a failing
/// command explains itself at the end).
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024;
/// Longest timeout an action may have.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Timeout of an action whose definition gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One action as the operator defined it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionSpec {
    /// The program (an absolute path: with a cleared environment there is
    /// no `PATH` to search) and its arguments.
    pub argv: Vec<String>,
    /// How long it may run before it is killed.
    pub timeout: Duration,
    /// The whole environment it gets.
    pub env: BTreeMap<String, String>,
    /// Its working directory (`/` when unset).
    pub working_dir: Option<PathBuf>,
}

impl ActionSpec {
    /// Checks the definition of action `name` is usable: a valid name, an
    /// absolute program that exists, a timeout within bounds, environment
    /// names without `=` or NUL.
    pub fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let err = |reason: String| ConfigError::Action {
            name: name.to_string(),
            reason,
        };
        if !valid_name(name) {
            return Err(err(
                "names are 1-64 characters of a-z, 0-9, '-', '_' and '.'".into(),
            ));
        }
        let Some(program) = self.argv.first() else {
            return Err(err("argv is empty".into()));
        };
        if !std::path::Path::new(program).is_absolute() {
            return Err(err(format!(
                "the program {program:?} must be an absolute path (actions run with a cleared environment, without PATH)"
            )));
        }
        if !std::path::Path::new(program).is_file() {
            return Err(err(format!("the program {program} does not exist")));
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err(err("argv contains a NUL byte".into()));
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(err(format!(
                "timeout must be between 1 s and {} s",
                MAX_TIMEOUT.as_secs()
            )));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(err(format!("invalid environment variable {key:?}")));
            }
        }
        if let Some(dir) = &self.working_dir
            && !dir.is_dir()
        {
            return Err(err(format!(
                "the working directory {} does not exist",
                dir.display()
            )));
        }
        Ok(())
    }
}

/// An action as written in an agent's or host's configuration file
/// (`[actions.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionDefinition {
    /// The program, an absolute path, and its arguments.
    pub argv: Vec<String>,
    /// Seconds it may run (default 30, at most 600).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Its whole environment (nothing is inherited).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its working directory (default `/`).
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
}

impl ActionDefinition {
    /// The checked [`ActionSpec`] of action `name`.
    pub fn spec(&self, name: &str) -> Result<ActionSpec, ConfigError> {
        let spec = ActionSpec {
            argv: self.argv.clone(),
            timeout: self
                .timeout_secs
                .map_or(DEFAULT_TIMEOUT, Duration::from_secs),
            env: self.env.clone(),
            working_dir: self.working_dir.clone(),
        };
        spec.validate(name)?;
        Ok(spec)
    }
}

/// The specs of the actions `names` out of `defined` (a configuration's
/// `[actions]`): the grants of one instance. A name that is not defined
/// is an error naming it.
pub fn granted_specs<'a>(
    names: impl IntoIterator<Item = &'a String>,
    defined: &BTreeMap<String, ActionDefinition>,
) -> Result<BTreeMap<String, ActionSpec>, ConfigError> {
    let mut specs = BTreeMap::new();
    for name in names {
        let definition = defined.get(name).ok_or_else(|| ConfigError::Action {
            name: name.clone(),
            reason: "no [actions] entry of this configuration defines it".into(),
        })?;
        specs.insert(name.clone(), definition.spec(name)?);
    }
    Ok(specs)
}

/// Whether `name` is a valid action name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// How a finished action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRun {
    /// Exit status; `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The last [`MAX_OUTPUT_BYTES`] of standard output, lossy UTF-8.
    pub stdout: String,
    /// The same of standard error.
    pub stderr: String,
}

/// Why an action did not run to its end.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActionError {
    /// The program could not be started.
    #[error("action {name} cannot be started: {reason}")]
    Spawn {
        /// The action.
        name: String,
        /// The operating system's reason.
        reason: String,
    },
    /// It outlived its time and was killed.
    #[error("action {name} was killed after {after:?} (its timeout or the call's deadline)")]
    TimedOut {
        /// The action.
        name: String,
        /// How long it was given.
        after: Duration,
    },
}

/// Runs `spec` as action `name` for at most `limit` (the smaller of its
/// timeout and what is left of the call). The process is killed when the
/// returned future is dropped.
pub async fn run(name: &str, spec: &ActionSpec, limit: Duration) -> Result<ActionRun, ActionError> {
    let started = Instant::now();
    let mut command = tokio::process::Command::new(&spec.argv[0]);
    command
        .args(&spec.argv[1..])
        .env_clear()
        .envs(&spec.env)
        .current_dir(spec.working_dir.as_deref().unwrap_or("/".as_ref()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| ActionError::Spawn {
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(ActionError::Spawn {
            name: name.to_string(),
            reason: "its output pipes are missing".into(),
        });
    };
    let finished = async {
        let (out, err, status) = tokio::join!(tail(stdout), tail(stderr), child.wait());
        (out, err, status)
    };
    match tokio::time::timeout(limit, finished).await {
        Ok((stdout, stderr, status)) => {
            let status = status.map_err(|e| ActionError::Spawn {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
            let run = ActionRun {
                exit_code: status.code(),
                stdout,
                stderr,
            };
            tracing::info!(target: "certplane::action", action = name, exit_code = ?run.exit_code,
                elapsed_ms = started.elapsed().as_millis() as u64, "action finished");
            Ok(run)
        }
        Err(_) => {
            // `kill_on_drop` covers a dropped call; a timeout kills and reaps
            // here so no zombie is left behind.
            let _ = child.kill().await;
            tracing::warn!(target: "certplane::action", action = name, timeout_ms = limit.as_millis() as u64,
                "action killed: it outlived its time");
            Err(ActionError::TimedOut {
                name: name.to_string(),
                after: limit,
            })
        }
    }
}

/// Reads a stream to its end, keeping only the last [`MAX_OUTPUT_BYTES`]
/// (reading on so the child never blocks on a full pipe).
async fn tail(mut stream: impl AsyncRead + Unpin) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * MAX_OUTPUT_BYTES {
                    kept.drain(..kept.len() - MAX_OUTPUT_BYTES);
                }
            }
        }
    }
    if kept.len() > MAX_OUTPUT_BYTES {
        kept.drain(..kept.len() - MAX_OUTPUT_BYTES);
    }
    let text = String::from_utf8_lossy(&kept).into_owned();
    // A cut can split a character; the replacement character it leaves at
    // the start says nothing.
    text.trim_start_matches('\u{FFFD}').to_string()
}

impl actions::Host for CallState {
    async fn granted(&mut self, name: String) -> bool {
        self.actions.contains_key(&name)
    }

    async fn run(&mut self, name: String) -> Result<actions::ActionOutput, ConnectorError> {
        let Some(spec) = self.actions.get(&name).cloned() else {
            let shown: String = name.chars().take(64).collect();
            return Err(ConnectorError::InvalidConfig(format!(
                "action {shown:?} is not granted to this instance (the agent's or host's configuration defines actions; the instance's grants name them)"
            )));
        };
        let left = self.deadline.saturating_sub(self.started.elapsed());
        let limit = spec.timeout.min(left);
        match run(&name, &spec, limit).await {
            Ok(run) => Ok(actions::ActionOutput {
                exit_code: run.exit_code,
                stdout: self.redactor.bound(&run.stdout, MAX_OUTPUT_BYTES),
                stderr: self.redactor.bound(&run.stderr, MAX_OUTPUT_BYTES),
            }),
            Err(e) => Err(ConnectorError::Transient(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str]) -> ActionSpec {
        ActionSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(5),
            env: BTreeMap::new(),
            working_dir: None,
        }
    }

    #[test]
    fn definitions_are_checked() {
        assert!(spec(&["/bin/true"]).validate("reload").is_ok());
        for (name, s) in [
            ("Reload", spec(&["/bin/true"])),
            ("reload", spec(&[])),
            ("reload", spec(&["true"])),
            ("reload", spec(&["/no/such/program"])),
            ("reload", spec(&["/bin/true", "a\0b"])),
        ] {
            assert!(s.validate(name).is_err(), "{name} {s:?}");
        }
        let mut long = spec(&["/bin/true"]);
        long.timeout = Duration::from_secs(601);
        assert!(long.validate("x").is_err());
        let mut env = spec(&["/bin/true"]);
        env.env.insert("A=B".into(), "c".into());
        assert!(env.validate("x").is_err());
    }

    #[tokio::test]
    async fn runs_without_a_shell_and_with_only_its_environment() {
        let mut s = spec(&["/usr/bin/env"]);
        s.env.insert("ONLY".into(), "this".into());
        // The test's own environment must not leak through.
        let env = run("env", &s, Duration::from_secs(5)).await.unwrap();
        assert_eq!(env.exit_code, Some(0));
        assert_eq!(env.stdout.trim(), "ONLY=this");

        let s = spec(&["/bin/echo", "$HOME", ";", "rm", "-rf", "/"]);
        let echo = run("echo", &s, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            echo.stdout.trim(),
            "$HOME ; rm -rf /",
            "no shell expands it"
        );
    }

    #[tokio::test]
    async fn exit_codes_and_signals_are_answers() {
        let run1 = run("false", &spec(&["/bin/false"]), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(run1.exit_code, Some(1));
        let killed = run(
            "kill",
            &spec(&["/bin/sh", "-c", "kill -9 $$"]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(killed.exit_code, None);
    }

    #[tokio::test]
    async fn output_is_cut_to_its_last_bytes() {
        let s = spec(&[
            "/bin/sh",
            "-c",
            "head -c 100000 /dev/zero | tr '\\0' a; echo END",
        ]);
        let big = run("big", &s, Duration::from_secs(5)).await.unwrap();
        assert!(big.stdout.len() <= MAX_OUTPUT_BYTES, "{}", big.stdout.len());
        assert!(big.stdout.ends_with("END\n"));
    }

    #[tokio::test]
    async fn a_hanging_action_is_killed_at_its_limit() {
        let started = Instant::now();
        let err = run(
            "hang",
            &spec(&["/bin/sleep", "30"]),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ActionError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let err = run("gone", &spec(&["/no/such/program"]), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, ActionError::Spawn { .. }), "{err}");
    }
}
