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
    let reply: control::ReloadReply = match control::call(&a.socket.socket, &Request::Reload {}) {
        Ok(r) => r,
        // The daemon refused: say that nothing changed (a bad policy leaves the old one in force).
        Err(control::ClientError::Refused(e)) => {
            anyhow::bail!("reload refused, nothing changed: {e}")
        }
        Err(e) => return Err(e.into()),
    };
    let r = &reply.reloaded;
    match &reply.app {
        // App-only (no interface): no rule or list is installed; say what the app layer
        // took instead of "0 rules".
        Some(app) if app.app_only => println!(
            "reloaded: generation {}, {} endpoints and {} signals (app-only: no interface), {:.1} ms",
            r.generation, app.endpoints, app.signals, r.took_ms
        ),
        _ => println!(
            "reloaded: generation {}, {} rules, {} allow and {} deny prefixes, {:.1} ms",
            r.generation, r.rules, r.allow, r.deny, r.took_ms
        ),
    }
    Ok(ExitCode::SUCCESS)
}
