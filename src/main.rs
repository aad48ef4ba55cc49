//! The `wsscale` command: parse the command line, set up logging, run the subcommand.

use anyhow::Context;
use clap::Parser;
use std::process::ExitCode;

use wsscale::config::{Cli, Command, ConfigError, ServeConfig};
use wsscale::server::tls::TlsSetupError;
use wsscale_host::alloc::CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Exit status 2 is bad input (as clap's own for flags it cannot parse): a flag value the
/// configuration refuses, a certificate or key that cannot be used. 1 is any other failure.
fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            let bad_input =
                error.downcast_ref::<ConfigError>().is_some() || error.downcast_ref::<TlsSetupError>().is_some();
            ExitCode::from(if bad_input { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = ServeConfig::try_from(args).context("invalid serve options")?;
            wsscale::server::serve(config)
        }
        Command::Compare(args) => wsscale::compare::run(args),
        Command::Load(args) => {
            let reexec = wsscale_loadgen::Reexec {
                program: std::env::current_exe().context("locating this executable to start shards")?,
                args: vec!["load".into()],
            };
            wsscale_loadgen::run(args, reexec)?;
            Ok(())
        }
    }
}
