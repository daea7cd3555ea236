//! `shield reload`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use shield_user::control::{self, Request};

use super::SocketArgs;

#[derive(Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
}

pub fn run(a: ReloadArgs) -> Result<ExitCode> {
    let r: control::Reloaded = control::call(&a.socket.socket, &Request::Reload {})?;
    println!(
        "reloaded: generation {}, {} rules, {} allow and {} deny prefixes, {:.1} ms",
        r.generation, r.rules, r.allow, r.deny, r.took_ms
    );
    Ok(ExitCode::SUCCESS)
}
