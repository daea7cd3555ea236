//! `shield check`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;
use shield_user::{
    control::{self, Request},
    policy,
};

use super::SocketArgs;

#[derive(Args)]
pub struct CheckArgs {
    /// Policy file.
    pub file: PathBuf,
    /// Show what would change against the running daemon's policy (- running, + FILE).
    #[arg(long)]
    pub diff: bool,
    /// The daemon's control socket, for --diff.
    #[command(flatten)]
    pub socket: SocketArgs,
}

pub fn run(a: CheckArgs) -> Result<ExitCode> {
    let (file, diff, socket) = (a.file, a.diff, a.socket.socket);
    match policy::load(&file) {
        Ok(p) if diff => {
            print_warnings(&file, &p);
            let running: control::RunningPolicy = control::call(&socket, &Request::Policy {})?;
            let new = policy::matrix_table(&p);
            println!(
                "--- running: {} (generation {})\n+++ {}",
                running.path,
                running.generation,
                file.display()
            );
            let changes = line_diff(&running.matrix, &new);
            if changes.is_empty() {
                println!("no change");
            } else {
                print!("{changes}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(p) => {
            print_warnings(&file, &p);
            print!("{}", policy::matrix_table(&p));
            if let Some(f) = &p.fleet {
                print!("{}", policy::describe_fleet(f));
            }
            println!("{}: valid", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("shield: error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `shield check`: likely mistakes in a valid policy, on stderr (the exit status stays 0).
fn print_warnings(file: &std::path::Path, p: &policy::Policy) {
    for w in policy::warnings(p) {
        eprintln!("shield: warning: {}: {w}", file.display());
    }
}

/// The column header of a matrix table (`RULE  PROTO …`, `ENDPOINT  METHODS …`,
/// `SIGNAL  KEY …`): printed above the first changed row under it, so the row can be read.
fn is_table_header(line: &str) -> bool {
    let mut words = line.split_whitespace();
    matches!(
        (words.next(), words.next()),
        (Some("RULE"), Some("PROTO"))
            | (Some("ENDPOINT"), Some("METHODS"))
            | (Some("SIGNAL"), Some("KEY"))
    )
}

/// A matrix line's cells: the text between runs of two or more spaces (a cell holds single
/// spaces at most: `SCOPE v4/v6`, `5/s burst 10`).
fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// Lines only in `old` (-) and only in `new` (+), in order (LCS on lines; tables are small),
/// each table's column header (unchanged, two spaces in; the new one) above its first changed
/// row. Lines compare with their runs of spaces collapsed: a column widened by one row's new
/// value leaves the other rows unchanged. A table's changed rows and its header are laid out
/// again with common column widths, so a running row printed with the running policy's
/// widths still lines up under the header.
fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let words = |ls: &[&str]| -> Vec<String> {
        ls.iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    let (wa, wb) = (words(&a), words(&b));
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if wa[i] == wb[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // (mark, line, the table it is under: an index into `headers`)
    let mut lines: Vec<(&str, &str, Option<usize>)> = Vec::new();
    let mut headers: Vec<&str> = Vec::new();
    let (mut i, mut j) = (0, 0);
    // The header of the table being walked, and whether a changed row printed it.
    let mut table: Option<(usize, bool)> = None;
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && wa[i] == wb[j] {
            if is_table_header(b[j]) {
                headers.push(b[j]);
                table = Some((headers.len() - 1, false));
            }
            i += 1;
            j += 1;
            continue;
        }
        if let Some((t, printed @ false)) = &mut table {
            lines.push((" ", headers[*t], Some(*t)));
            *printed = true;
        }
        // The running line first, then what replaces it, as `diff -u` writes them.
        let (mark, line) = if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            i += 1;
            ("-", a[i - 1])
        } else {
            j += 1;
            ("+", b[j - 1])
        };
        if is_table_header(line) {
            headers.push(line);
            table = Some((headers.len() - 1, true));
        }
        lines.push((mark, line, table.map(|(t, _)| t)));
    }
    // Per table, the widest cell of each column among the lines shown (rows with as many
    // cells as the header: the lines after a table, `allow …`, stay as they are).
    let columns = |t: usize| cells(headers[t]).len();
    let mut widths: Vec<Vec<usize>> = headers.iter().map(|h| vec![0; cells(h).len()]).collect();
    for (_, line, t) in &lines {
        if let Some(t) = *t
            && cells(line).len() == columns(t)
        {
            for (w, c) in widths[t].iter_mut().zip(cells(line)) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    for (mark, line, t) in lines {
        out.push_str(mark);
        out.push(' ');
        match t {
            Some(t) if cells(line).len() == columns(t) => {
                let row = cells(line);
                let last = row.len() - 1;
                for (k, (c, w)) in row.iter().zip(&widths[t]).enumerate() {
                    if k == last {
                        out.push_str(c);
                    } else {
                        out.push_str(&format!("{c:<w$}  "));
                    }
                }
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::line_diff;

    /// The matrix of a policy: a tcp rule `name` with the `connections` limit `limit`, and a
    /// udp rule `dns`.
    fn matrix(name: &str, limit: &str) -> String {
        let text = format!(
            "[[rule]]\nname = \"{name}\"\nprotocol = \"tcp\"\nports = [8000]\nconnections = {limit}\n\n\
             [[rule]]\nname = \"dns\"\nprotocol = \"udp\"\nports = [53]\npackets = {{ rate = \"50/s\", burst = 100 }}\n"
        );
        shield_user::policy::matrix_table(&shield_user::policy::parse_str("p.toml", &text).unwrap())
    }

    #[test]
    fn a_changed_line_shows_the_running_one_first() {
        let old = "HEAD\napi 5/s\ndns 200/s\n";
        let new = "HEAD\napi 8/s\ndns 200/s\nicmp 10/s\n";
        assert_eq!(line_diff(old, new), "- api 5/s\n+ api 8/s\n+ icmp 10/s\n");
        assert_eq!(line_diff(new, old), "- api 8/s\n+ api 5/s\n- icmp 10/s\n");
        assert_eq!(line_diff(old, old), "");
    }

    #[test]
    fn a_wider_column_does_not_mark_unchanged_rows() {
        // `shield tune` writes a longer limit for one rule: the matrix's columns widen, but
        // only that rule changed, so only its row is in the diff.
        let matrix = |web: &str| matrix("web", web);
        let old = matrix("{ rate = \"100/s\", burst = 200 }");
        let new = matrix("{ rate = \"14/s\", burst = 28, sustained = \"707/min\" }");
        assert_ne!(old.lines().nth(1), new.lines().nth(1), "the columns widen");
        let d = line_diff(&old, &new);
        let changed: Vec<&str> = d.lines().filter(|l| !l.starts_with("  ")).collect();
        assert_eq!(changed.len(), 2, "only web's row, - and +:\n{d}");
        assert!(
            changed[0].starts_with("- web") && changed[1].starts_with("+ web"),
            "{d}"
        );
        assert!(d.starts_with("  RULE"), "the header above the row:\n{d}");
    }

    #[test]
    fn running_and_new_rows_line_up_under_the_header() {
        // `shield tune --write` then `shield check --diff`: the running row was laid out
        // with its own (wider) column, the header and the new row with the file's.
        let matrix = |api: &str| matrix("api", api);
        let old = matrix("{ rate = \"5/s\", burst = 10, sustained = \"100/min\" }");
        let new = matrix("{ rate = \"3/s\", burst = 6, sustained = \"15/min\" }");
        let d = line_diff(&old, &new);
        // Where each cell starts: the header's columns.
        let starts = |line: &str| -> Vec<usize> {
            let mut at = Vec::new();
            let bytes = line.as_bytes();
            for k in 2..line.len() {
                let after_gap = k >= 4 && bytes[k - 1] == b' ' && bytes[k - 2] == b' ';
                if bytes[k] != b' ' && (k == 2 || after_gap) {
                    at.push(k);
                }
            }
            at
        };
        let lines: Vec<&str> = d.lines().collect();
        assert_eq!(lines.len(), 3, "the header, - api, + api:\n{d}");
        assert!(
            lines[0].starts_with("  RULE") && lines[1].starts_with("- api"),
            "{d}"
        );
        for row in &lines[1..] {
            assert_eq!(
                starts(row),
                starts(lines[0]),
                "a row's columns do not line up under the header:\n{d}"
            );
        }
    }

    #[test]
    fn changed_rows_come_under_their_tables_header() {
        let old = "defaults: enforce\nRULE  PROTO  PORTS\napi   tcp    8080\ndns   udp    53\n\
                   ENDPOINT  METHODS  PATH\nlogin     POST     /login\nSIGNAL  KEY\nfailed  ip\n";
        let new = "defaults: enforce\nRULE  PROTO  PORTS\napi   tcp    8081\ndns   udp    53\n\
                   ENDPOINT  METHODS  PATH\nlogin     POST     /login\nSIGNAL  KEY\nfailed  user\n";
        assert_eq!(
            line_diff(old, new),
            "  RULE  PROTO  PORTS\n- api   tcp    8080\n+ api   tcp    8081\n\
             \x20 SIGNAL  KEY\n- failed  ip\n+ failed  user\n"
        );
        // A changed line outside the tables has no header.
        assert_eq!(
            line_diff("defaults: enforce\n", "defaults: monitor\n"),
            "- defaults: enforce\n+ defaults: monitor\n"
        );
    }
}
