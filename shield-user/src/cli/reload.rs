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
    let r: control::Reloaded = match control::call(&a.socket.socket, &Request::Reload {}) {
        Ok(r) => r,
        // The daemon refused: say that nothing changed (a bad policy leaves the old one in force).
        Err(control::ClientError::Refused(e)) => {
            anyhow::bail!("reload refused, nothing changed: {e}")
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "reloaded: generation {}, {} rules, {} allow and {} deny prefixes, {:.1} ms",
        r.generation, r.rules, r.allow, r.deny, r.took_ms
    );
    Ok(ExitCode::SUCCESS)
}
