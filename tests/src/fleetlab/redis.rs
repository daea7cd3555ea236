//! The fleet lab's `redis-server`: started in a namespace with a password and an
//! append-only file, and a minimal RESP client for the tests' own commands.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netlab::{Netns, sh, unique};

/// A `redis-server` in `ns`, SIGKILLed on drop; its data directory removed.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    pub password: String,
    pub dir: PathBuf,
    ns: String,
    /// More `redis-server` arguments (TLS).
    extra: Vec<String>,
}

impl Redis {
    pub fn start(ns: &Netns, port: u16, password: &str) -> Result<Redis> {
        Redis::start_with(ns, port, password, None)
    }

    /// With `tls_port`: also TLS on that port, with a certificate for the hub's addresses
    /// signed by a CA of its own (`DIR/ca.crt`).
    pub fn start_with(
        ns: &Netns,
        port: u16,
        password: &str,
        tls_port: Option<u16>,
    ) -> Result<Redis> {
        let dir = std::env::temp_dir().join(unique("shield-redis-"));
        std::fs::create_dir_all(&dir)?;
        let mut extra = Vec::new();
        if let Some(tls) = tls_port {
            let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
            sh(
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    &d("ca.key"),
                    "-out",
                    &d("ca.crt"),
                    "-days",
                    "2",
                    "-subj",
                    "/CN=shield fleet test CA",
                ],
            )?;
            sh(
                "openssl",
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    &d("srv.key"),
                    "-out",
                    &d("srv.csr"),
                    "-subj",
                    "/CN=redis",
                ],
            )?;
            std::fs::write(
                dir.join("ext"),
                "subjectAltName=IP:127.0.0.1,IP:10.77.1.1,IP:10.77.2.1,IP:10.77.3.1\n",
            )?;
            sh(
                "openssl",
                &[
                    "x509",
                    "-req",
                    "-in",
                    &d("srv.csr"),
                    "-CA",
                    &d("ca.crt"),
                    "-CAkey",
                    &d("ca.key"),
                    "-CAcreateserial",
                    "-out",
                    &d("srv.crt"),
                    "-days",
                    "2",
                    "-extfile",
                    &d("ext"),
                ],
            )?;
            extra = vec![
                "--tls-port".into(),
                tls.to_string(),
                "--tls-cert-file".into(),
                d("srv.crt"),
                "--tls-key-file".into(),
                d("srv.key"),
                "--tls-ca-cert-file".into(),
                d("ca.crt"),
                "--tls-auth-clients".into(),
                "no".into(),
            ];
        }
        let mut r = Redis {
            child: None,
            port,
            password: password.to_string(),
            dir,
            ns: ns.name.clone(),
            extra,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("redis.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "redis-server", "--port"])
            .arg(self.port.to_string())
            .args([
                "--bind",
                "0.0.0.0",
                "--protected-mode",
                "no",
                "--requirepass",
            ])
            .arg(&self.password)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "starting redis-server (Debian package redis-server; `cargo xtask bootstrap`)",
            )?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.cmd(&["PING"]).is_ok_and(|r| r == "PONG") {
                return Ok(());
            }
            if let Some(s) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "redis-server exited ({s}): {}",
                    std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data (the append-only file).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Copies its data aside (the append-only files, written at each command): what
    /// `restart_from_aside` loads.
    pub fn save_aside(&self) -> Result<()> {
        let aside = self.dir.join("aside");
        if aside.exists() {
            std::fs::remove_dir_all(&aside)?;
        }
        sh(
            "cp",
            &[
                "-a",
                &self.dir.join("appendonlydir").to_string_lossy(),
                &aside.to_string_lossy(),
            ],
        )
    }

    /// Starts it again on the same port from the data `save_aside` copied, as a Redis
    /// restored from an older backup.
    pub fn restart_from_aside(&mut self) -> Result<()> {
        self.kill();
        let data = self.dir.join("appendonlydir");
        std::fs::remove_dir_all(&data)?;
        std::fs::rename(self.dir.join("aside"), &data)?;
        self.spawn()
    }

    /// Starts it again on the same port without its data, as a Redis without persistence
    /// comes back from a crash.
    pub fn restart_empty(&mut self) -> Result<()> {
        self.kill();
        for data in ["appendonlydir", "appendonly.aof", "dump.rdb"] {
            let p = self.dir.join(data);
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else if p.exists() {
                std::fs::remove_file(&p)?;
            }
        }
        self.spawn()
    }

    /// One command (after AUTH), from inside the hub namespace: the reply as text (simple
    /// strings, integers and bulk strings; arrays as their element count).
    pub fn cmd(&self, args: &[&str]) -> Result<String> {
        let ns = Netns {
            name: self.ns.clone(),
        };
        let port = self.port;
        let pw = self.password.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = ns.run_in(move || -> Result<String> {
            let s = TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                Duration::from_millis(500),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut w = s.try_clone()?;
            let mut r = BufReader::new(s);
            let auth = ["AUTH".to_string(), pw];
            w.write_all(&encode(&auth))?;
            let a = read_reply(&mut r)?;
            if a != "OK" {
                bail!("AUTH: {a}");
            }
            w.write_all(&encode(&args))?;
            read_reply(&mut r)
        });
        // Not ours to delete: the hub namespace's guard does that.
        std::mem::forget(ns);
        out?
    }

    /// Many commands on one connection (pipelined), e.g. a burst of XADDs.
    pub fn pipeline(&self, cmds: &[Vec<String>]) -> Result<()> {
        let ns = Netns {
            name: self.ns.clone(),
        };
        let port = self.port;
        let pw = self.password.clone();
        let cmds = cmds.to_vec();
        let out = ns.run_in(move || -> Result<()> {
            let s = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut w = s.try_clone()?;
            let mut r = BufReader::new(s);
            let mut buf = encode(&["AUTH".to_string(), pw]);
            for c in &cmds {
                buf.extend(encode(c));
            }
            w.write_all(&buf)?;
            for _ in 0..=cmds.len() {
                read_reply(&mut r)?;
            }
            Ok(())
        });
        std::mem::forget(ns);
        out?
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn encode(args: &[String]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).bytes());
        out.extend(a.bytes());
        out.extend(b"\r\n");
    }
    out
}

fn read_reply(r: &mut BufReader<TcpStream>) -> Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end().to_string();
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_string()),
        "-" => bail!("redis error: {rest}"),
        "$" => {
            let n: i64 = rest.parse()?;
            if n < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" => {
            let n: i64 = rest.parse()?;
            for _ in 0..n.max(0) {
                read_reply(r)?;
            }
            Ok(n.to_string())
        }
        _ => bail!("unexpected reply {line:?}"),
    }
}
