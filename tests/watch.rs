//! WatchServers against a real node: history after a revision, then live changes.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;
use mcpfleet::proto::v1 as pb;

fn put(name: &str) -> pb::PutServerRequest {
    pb::PutServerRequest {
        spec: Some(pb::ServerSpec {
            name: name.into(),
            transport: Some(pb::server_spec::Transport::Stdio(pb::StdioTransport {
                command: "echo".into(),
                ..Default::default()
            })),
            replicas: 1,
            ..Default::default()
        }),
        expected_revision: None,
    }
}

/// The next event, within 10 s.
async fn next(stream: &mut tonic::Streaming<pb::WatchEvent>) -> Result<pb::WatchEvent> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .context("no event within 10 s")?
        .context("watch failed")?
        .context("watch ended")
}

#[test]
fn watch_streams_history_then_live_changes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let addr = format!("127.0.0.1:{}", free_port());
    let _node = NodeProcess::start(1, &addr, &dir.path().join("data"), &[])?;
    wait_for_leader(&addr, Duration::from_secs(20))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut client =
            pb::registry_client::RegistryClient::connect(format!("http://{addr}")).await?;
        // (Node liveness also moves the registry's revision: take each write's own.)
        let a = client.put_server(put("a")).await?.into_inner().revision;
        let b = client.put_server(put("b")).await?.into_inner().revision;
        // From a's revision: only the change to b is history.
        let mut stream = client
            .watch_servers(pb::WatchServersRequest { from_revision: a })
            .await?
            .into_inner();
        let event = next(&mut stream).await?;
        ensure!(event.revision == b && event.name == "b", "{event:?}");
        ensure!(event.kind == pb::watch_event::Kind::Put as i32);
        // Live changes follow.
        let deleted = client
            .delete_server(pb::DeleteServerRequest {
                name: "a".into(),
                expected_revision: None,
            })
            .await?
            .into_inner()
            .revision;
        let event = next(&mut stream).await?;
        ensure!(event.revision == deleted && event.name == "a", "{event:?}");
        ensure!(event.kind == pb::watch_event::Kind::Delete as i32 && event.server.is_none());
        let c = client.put_server(put("c")).await?.into_inner().revision;
        let event = next(&mut stream).await?;
        ensure!(event.revision == c && event.name == "c", "{event:?}");
        let spec = event
            .server
            .and_then(|s| s.spec)
            .context("put carries the server")?;
        ensure!(spec.replicas == 1);
        anyhow::Ok(())
    })
}
