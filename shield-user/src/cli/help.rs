//! `shield help [COMMAND]`.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, CommandFactory as _};

use super::Cli;

#[derive(Args)]
pub struct HelpArgs {
    /// The command to explain (none: every command).
    #[arg(value_name = "COMMAND")]
    pub command: Option<String>,
}

pub fn run(a: HelpArgs) -> Result<ExitCode> {
    let mut cli = Cli::command();
    match a.command {
        None => cli.print_long_help()?,
        Some(name) => match cli.find_subcommand_mut(&name) {
            Some(sub) => sub
                .clone()
                .bin_name(format!("shield {name}"))
                .print_long_help()?,
            None => anyhow::bail!("no command `{name}`; `shield help` lists them"),
        },
    }
    Ok(ExitCode::SUCCESS)
}
