//! The handheld agent. Its commands (login, pull, confirm, sync, daemon) come
//! with the sync issue; for now it only knows its own version, and proves that
//! the agent builds without actix or sled.

use clap::Parser;

/// Handover handheld agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    eprintln!("handover-agent: no commands yet; see the README");
    Ok(())
}
