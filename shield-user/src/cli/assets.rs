//! `shield generate-assets --out DIR` (hidden): the man pages and shell completions the
//! Debian package ships, generated from this very clap definition so they never drift from
//! `--help`. `cargo xtask package` runs it on the release binary it packages; it is hidden
//! from `--help`, the man pages and the completions.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Args, Command, CommandFactory as _};
use clap_complete::Shell;

use super::Cli;

#[derive(Args)]
pub struct AssetsArgs {
    /// Directory to write into: `man/` (shield.1 and shield-COMMAND.1 for every command)
    /// and `completions/` (shield.bash, _shield for zsh, shield.fish).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(a: AssetsArgs) -> Result<ExitCode> {
    let man = a.out.join("man");
    let completions = a.out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing man pages into {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = visible();
        clap_complete::generate_to(shell, &mut cmd, "shield", &completions).with_context(|| {
            format!("writing {shell} completions into {}", completions.display())
        })?;
    }
    println!(
        "man pages in {}, completions in {}",
        man.display(),
        completions.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The command line without hidden commands (clap_complete would offer them): completions
/// offer only what a user may type.
fn visible() -> Command {
    let full = Cli::command();
    Command::new("shield")
        .version(env!("CARGO_PKG_VERSION"))
        .about(full.get_about().cloned().unwrap_or_default())
        .propagate_version(true)
        .disable_help_subcommand(true)
        .subcommand_required(true)
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}
