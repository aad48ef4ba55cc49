//! The server of one run, while it runs: a `wsscale serve` child (sampled from its
//! /metrics) or any `--server` ([`super::external`], sampled from /proc as a process
//! tree), started, read while a step settles, and stopped.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use wsscale_host::proc::TreeUsage;

use super::external::ExternalServer;
use super::floor::FloorSender;
use super::plan::{Plan, RunSpec, Target};
use crate::child::{ServeChild, http_get_body};
use crate::exposition::sample_value;

/// How long a wsscale server may take to exit after SIGTERM (its drain has nothing left).
const SERVER_EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The server of one run, while it runs.
pub enum Server {
    Wsscale(ServeChild),
    External(ExternalServer),
    /// `--push`'s floor, read like an external server.
    Floor(FloorSender),
}

/// One poll of a server while a step settles.
pub struct Reading {
    /// Connections the server holds (wsscale: its gauge; external: the clients' count).
    pub connections: u64,
    pub rss_bytes: u64,
    /// Where the rest of the sample comes from.
    pub figures: Figures,
}

/// A wsscale server's scrape (sampled from, once the step has settled), or an external
/// server's process tree.
pub enum Figures {
    Scrape(String),
    Tree(TreeUsage),
}

impl Server {
    pub async fn start(plan: &Plan, run: &RunSpec) -> anyhow::Result<Server> {
        let log_path = plan.out.join(format!("serve-{}.log", run.name));
        match &run.target {
            Target::Wsscale { builtin, .. } => {
                let log =
                    std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
                let program = plan.program.clone();
                let args = plan.server_flags.args(*builtin);
                let child = tokio::task::spawn_blocking(move || {
                    ServeChild::spawn(&program, &args, |command| {
                        command.stderr(Stdio::from(log));
                        // The plan is the whole configuration: no WSSCALE_* variable of
                        // this process reaches the server.
                        for (name, _) in std::env::vars_os() {
                            if name.to_string_lossy().starts_with("WSSCALE_") {
                                command.env_remove(name);
                            }
                        }
                    })
                })
                .await?
                .with_context(|| format!("starting {} (log: {})", run.name, log_path.display()))?;
                Ok(Server::Wsscale(child))
            }
            Target::External { command } => {
                let timeout = Duration::from_secs_f64(plan.server_start_timeout_secs);
                Ok(Server::External(
                    ExternalServer::start(
                        &run.name,
                        command,
                        &plan.path,
                        timeout,
                        &log_path,
                        plan.server_flags.tls.as_ref(),
                    )
                    .await?,
                ))
            }
            Target::Floor { program, threads } => {
                let (program, threads) = (program.clone(), *threads);
                let size = plan.push.map_or(32, |push| push.size_bytes);
                let floor = tokio::task::spawn_blocking(move || FloorSender::start(&program, threads, size, &log_path))
                    .await??;
                Ok(Server::Floor(floor))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        match self {
            Server::Wsscale(child) => child.pid(),
            Server::External(server) => server.pid(),
            Server::Floor(floor) => floor.pid(),
        }
    }

    pub fn url(&self, plan: &Plan) -> String {
        match self {
            Server::Wsscale(child) => child.url(),
            Server::External(server) => server.url(&plan.path),
            Server::Floor(floor) => floor.url(),
        }
    }

    pub async fn read(&self, clients_open: u64) -> anyhow::Result<Reading> {
        match self {
            Server::Wsscale(child) => {
                let text = http_get_body(child.metrics_addr, "/metrics")
                    .await
                    .context("scraping the server")?;
                let value = |name: &str| sample_value(&text, name, &[]).unwrap_or(-1.0);
                Ok(Reading {
                    connections: value(crate::metrics::CONNECTIONS_ACTIVE) as u64,
                    rss_bytes: value("process_resident_memory_bytes") as u64,
                    figures: Figures::Scrape(text),
                })
            }
            Server::External(_) | Server::Floor(_) => {
                let tree = TreeUsage::read(self.pid()).context("the server exited")?;
                Ok(Reading {
                    connections: clients_open,
                    rss_bytes: tree.rss_bytes,
                    figures: Figures::Tree(tree),
                })
            }
        }
    }

    /// Stops the server; a warning if it did not stop cleanly.
    pub async fn stop(self, name: &str) -> anyhow::Result<()> {
        let clean = match self {
            Server::Wsscale(mut child) => {
                child.signal(libc::SIGTERM)?;
                let status = tokio::task::spawn_blocking(move || child.wait_exit(SERVER_EXIT_TIMEOUT)).await??;
                status.is_some_and(|status| status.success())
            }
            Server::External(server) => tokio::task::spawn_blocking(move || server.stop()).await?,
            Server::Floor(floor) => tokio::task::spawn_blocking(move || floor.stop()).await?,
        };
        if !clean {
            eprintln!("[{name}] warning: the server did not exit cleanly on SIGTERM");
        }
        Ok(())
    }
}

/// Starts and stops every `--server` once: each must start and upgrade a connection; and
/// the floor, which must start and print its addresses.
pub async fn check_external_servers(plan: &Plan) -> anyhow::Result<()> {
    for run in &plan.runs {
        if let Target::Floor { .. } = &run.target {
            eprintln!("[{}] checking that it starts", run.name);
            let floor = Server::start(plan, run).await?;
            floor.stop(&run.name).await?;
            continue;
        }
        let Target::External { command } = &run.target else {
            continue;
        };
        eprintln!("[{}] checking that it starts and upgrades", run.name);
        let log = plan.out.join(format!("serve-{}.log", run.name));
        let timeout = Duration::from_secs_f64(plan.server_start_timeout_secs);
        let server = ExternalServer::start(
            &run.name,
            command,
            &plan.path,
            timeout,
            &log,
            plan.server_flags.tls.as_ref(),
        )
        .await?;
        tokio::task::spawn_blocking(move || server.stop()).await?;
    }
    Ok(())
}
