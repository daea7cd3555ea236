//! A client of the daemon's app socket speaking its line protocol (the role `shield_flask`
//! plays in production), for the namespace tests and the latency measurement.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

pub struct AppClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl AppClient {
    pub fn connect(path: &Path) -> Result<AppClient> {
        let s = UnixStream::connect(path)
            .with_context(|| format!("connecting to the app socket {}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(AppClient {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends one raw line (a newline is added) and reads the reply line as JSON.
    pub fn raw(&mut self, line: &str) -> Result<Value> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            bail!("the daemon closed the app socket connection without a reply");
        }
        serde_json::from_str(&reply).with_context(|| format!("reply {reply:?} is not JSON"))
    }

    pub fn call(&mut self, req: &Value) -> Result<Value> {
        self.raw(&req.to_string())
    }

    pub fn hello(&mut self) -> Result<Value> {
        self.call(&json!({"op": "hello"}))
    }

    /// `decide` for `METHOD path` with Flask rule `path` from TCP peer `peer`.
    pub fn decide(
        &mut self,
        method: &str,
        path: &str,
        peer: &str,
        xff: Option<&str>,
    ) -> Result<Value> {
        self.call(&json!({
            "op": "decide", "method": method, "rule": path, "path": path,
            "peer": peer, "xff": xff, "port": 8000, "headers": {}, "user": null,
        }))
    }

    pub fn report(&mut self, signal: &str, peer: &str) -> Result<Value> {
        self.call(&json!({"op": "report", "signal": signal, "peer": peer, "xff": null, "headers": {}, "user": null, "key": null}))
    }
}
