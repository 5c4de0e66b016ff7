//! A node whose disk fails under it exits, non-zero, with a one-line reason, so that
//! its supervisor (systemd, Kubernetes) restarts it, instead of living on unable to
//! vote or apply. The data dir sits on an 8 MiB tmpfs in a mount namespace of the
//! node's own (`unshare -m`, which needs root), and writes fill it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{binary, cli, free_port, wait_for_leader};

#[test]
fn a_node_whose_disk_fills_up_exits_with_one_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let small = dir.path().join("small");
    std::fs::create_dir(&small)?;
    let addr = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let script = format!(
        "mount -t tmpfs -o size=8m tmpfs '{small}' && exec '{bin}' serve --id 1 --listen {addr} \
         --http {http} --data '{small}/data'",
        small = small.display(),
        bin = binary(),
    );
    let mut node = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start a node in a mount namespace of its own (unshare -m)")?;
    let started = wait_for_leader(&addr, Duration::from_secs(20));
    if let Err(error) = started {
        let _ = node.kill();
        let output = node.wait_with_output()?;
        bail!(
            "the node did not start ({error}): {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Specs of about 60 KiB each (never run: no node has the tag) fill 8 MiB quickly.
    let filler = "x".repeat(60_000);
    // Once writes fail (the disk is full), the node has this long to exit.
    let mut deadline = Instant::now() + Duration::from_secs(120);
    let (mut written, mut failed) = (0, 0);
    let status = loop {
        if let Some(status) = node.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            let output = node.wait_with_output()?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last: Vec<&str> = stderr.lines().rev().take(6).collect();
            bail!(
                "the node still runs after {written} writes of 60 KiB onto 8 MiB and {failed} refused ones; its last lines: {}",
                last.join(" | ")
            );
        }
        let name = format!("filler-{written}");
        let added = cli(
            &addr,
            &[
                "server",
                "add",
                &name,
                "--command",
                "echo",
                "--arg",
                &filler,
                "--tag",
                "nowhere",
            ],
        );
        if added.status.success() {
            written += 1;
        } else {
            if failed == 0 {
                deadline = deadline.min(Instant::now() + Duration::from_secs(40));
            }
            failed += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let output = node.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !status.success(),
        "exited with {status} after {written} writes"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    ensure!(
        errors.len() == 1 && errors[0].contains("Raft stopped"),
        "exit {status} after {written} writes; stderr ends: {}",
        stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
    );
    ensure!(
        written > 0,
        "the node exited before any write: {}",
        errors[0]
    );
    eprintln!("after {written} writes: {}", errors[0]);
    Ok(())
}
