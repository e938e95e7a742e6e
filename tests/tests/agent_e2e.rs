//! Host + agent + plugins together, in one process: the agent is the real
//! `certplane_agent::run` talking HTTPS to the real `serve`.

mod common;

use std::time::Duration;

use certplane_agent::{Exit, Mode};
use certplane_host::demo::web::FileTlsServer;
use common::{Backend, Stack};
use tokio_util::sync::CancellationToken;

/// A running in-process agent.
struct RunningAgent {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<Exit, certplane_agent::AgentError>>,
}

impl RunningAgent {
    fn start(config: certplane_agent::AgentConfig) -> RunningAgent {
        let stop = CancellationToken::new();
        let task = tokio::spawn(certplane_agent::run(config, Mode::Continuous, stop.clone()));
        RunningAgent { stop, task }
    }

    async fn stop(self) -> Exit {
        self.stop.cancel();
        self.task.await.unwrap().unwrap()
    }
}

async fn issue_deploy_verify(backend: Backend) {
    let stack = Stack::new(backend, 30).await;
    let config = stack.agent_config("web-1");
    let deploy_dir = config.connectors["pem-files"].directories[0].path.clone();
    let agent = RunningAgent::start(config);
    let agent_id = stack.agent_id("web-1").await;
    let web = FileTlsServer::start(None).await.unwrap();
    let target = stack
        .pem_target(
            "files",
            &agent_id,
            &deploy_dir,
            Some((web.port, "site.e2e.test")),
        )
        .await;
    let cert = stack
        .certificate(
            "site",
            &["site.e2e.test"],
            "ecdsa-p256",
            target["id"].as_str().unwrap(),
        )
        .await;
    let cert_id = cert["id"].as_str().unwrap();
    assert_eq!(cert["key_source"], "agent");
    let cert_dir = deploy_dir.join(cert_id);
    web.set_files(cert_dir.join("fullchain.pem"), cert_dir.join("privkey.pem"));

    let deployment = stack
        .deployment_done(cert_id, Duration::from_secs(60))
        .await;
    assert_eq!(deployment["status"], "completed", "{deployment}");
    let verification = stack.verification(deployment["id"].as_str().unwrap()).await;
    let expected = stack.current_fingerprint(cert_id).await;
    assert_eq!(verification["status"], "verified", "{verification}");
    assert_eq!(verification["observed_fingerprint"], expected.as_str());
    assert_eq!(agent.stop().await, Exit::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_deploy_verify_sqlite() {
    issue_deploy_verify(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_deploy_verify_postgres() {
    issue_deploy_verify(Backend::Postgres).await;
}
