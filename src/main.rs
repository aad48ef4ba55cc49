//! The `wsscale` command: parse the command line, set up logging, run the subcommand.

use anyhow::Context;
use clap::Parser;
use wsscale::config::{Cli, Command, ServeConfig};
use wsscale_host::alloc::CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
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
