//! `shield ping`: whether the daemon is up and protects its interfaces, for scripts.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::Args;
use shield_user::control::{self, ClientError, Pong, Request};

use super::SocketArgs;

#[derive(Args)]
pub struct PingArgs {
    /// Keep asking for up to SECS seconds while no daemon answers yet (a daemon starting:
    /// it answers once its program is attached), instead of failing at once.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub wait: u64,
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// How often `--wait` asks again.
const RETRY: Duration = Duration::from_millis(200);

pub fn run(a: PingArgs) -> Result<ExitCode> {
    let deadline = Instant::now() + Duration::from_secs(a.wait);
    let pong: Pong = loop {
        match control::call(&a.socket.socket, &Request::Ping {}) {
            Ok(p) => break p,
            // Only "nothing listens yet" is worth waiting for: a refusal or a permission
            // problem will not change by itself.
            Err(e @ ClientError::NotRunning(_)) if Instant::now() >= deadline => {
                return Err(e.into());
            }
            Err(ClientError::NotRunning(_)) => std::thread::sleep(RETRY),
            Err(e) => return Err(e.into()),
        }
    };
    print!("{}", report(&pong));
    Ok(if pong.interfaces.iter().all(|i| i.protected) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// What `ping` prints: one line for the daemon, one per interface.
fn report(p: &Pong) -> String {
    if p.interfaces.is_empty() {
        return "shield: ready (app-only: no interface)\n".to_string();
    }
    let mut out = String::from("shield: ready\n");
    for i in &p.interfaces {
        match &i.lost {
            None => out.push_str(&format!("{}: protected\n", i.iface)),
            Some(why) => out.push_str(&format!(
                "{}: NOT PROTECTED: {why}; restart `shield run` to protect it again\n",
                i.iface
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shield_user::control::PingIface;

    #[test]
    fn says_which_interfaces_are_protected() {
        let p = Pong {
            pong: true,
            interfaces: vec![
                PingIface {
                    iface: "eth0".into(),
                    protected: true,
                    lost: None,
                },
                PingIface {
                    iface: "eth1".into(),
                    protected: false,
                    lost: Some("shield was detached from eth1".into()),
                },
            ],
        };
        assert_eq!(
            report(&p),
            "shield: ready\neth0: protected\neth1: NOT PROTECTED: shield was detached from eth1; \
             restart `shield run` to protect it again\n"
        );
        let app_only = Pong {
            pong: true,
            interfaces: Vec::new(),
        };
        assert_eq!(
            report(&app_only),
            "shield: ready (app-only: no interface)\n"
        );
    }
}
