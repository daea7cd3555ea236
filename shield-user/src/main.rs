//! The `shield` command.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if !cli.command.is_daemon() {
        // A closed pipe (`shield stats --watch | head`) ends a printing command quietly, as
        // it does any Unix tool, instead of a panic in println!. The daemon keeps ignoring
        // SIGPIPE: it writes to sockets and must not die with a client.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command.dispatch() {
        Ok(code) => code,
        Err(e) => {
            // The chain, without a cause its parent's message already quotes.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("shield: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
