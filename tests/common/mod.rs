//! Test harness: real servers started from their binaries on random loopback ports in
//! temp dirs, ready when `start` returns (readiness is polled, never slept for), and
//! stopped and removed on `Drop`.
//!
//! - PostgreSQL: `$TIDEMARK_PG_BIN` (default `/usr/lib/postgresql/15/bin`), started
//!   with `wal_level=logical`. `initdb` refuses root, so as root the server runs as
//!   the `postgres` user.
//! - Redis: `$TIDEMARK_REDIS_SERVER` (default `redis-server` on `PATH`).
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod bin_client;
pub mod rdb_scenario;
pub mod tidemark;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

/// Polls `ready` until it returns true; panics with `what` and `log` on timeout or
/// if `child` exits.
fn wait_ready(child: &mut Child, what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if ready() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited during start-up ({status}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if start.elapsed() > READY_TIMEOUT {
            panic!(
                "{what} not ready after {READY_TIMEOUT:?}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Sends `sig` to `child`, waits up to `grace`, then kills it.
fn stop(child: &mut Child, sig: i32, grace: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(pid, sig) };
    }
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// uid and gid of a system user, from /etc/passwd.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A throwaway PostgreSQL server.
pub struct Postgres {
    child: Child,
    dir: tempfile::TempDir,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
}

impl Postgres {
    /// initdb + start with logical replication enabled; ready when it returns.
    pub fn start() -> Postgres {
        Postgres::start_with(&[])
    }

    /// As [`Postgres::start`], with extra `name=value` server settings.
    pub fn start_with(settings: &[&str]) -> Postgres {
        let bin = PathBuf::from(
            std::env::var("TIDEMARK_PG_BIN")
                .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
        );
        assert!(
            bin.join("initdb").exists(),
            "PostgreSQL binaries not found in {}: install postgresql-15 or set TIDEMARK_PG_BIN",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("tidemark-pg-")
            .tempdir()
            .expect("temp dir");
        let ids = if is_root() {
            Some(user_ids("postgres").expect(
                "running as root needs the `postgres` user (apt-get install postgresql-15)",
            ))
        } else {
            None
        };
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown temp dir to postgres");
        }
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let as_pg = |cmd: &mut Command| {
            if let Some((uid, gid)) = ids {
                cmd.uid(uid).gid(gid);
            }
        };
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
                "-D",
            ])
            .arg(&data);
        as_pg(&mut initdb);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let logf = std::fs::File::create(&log).expect("server log");
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(&log, Some(uid), Some(gid)).expect("chown log");
        }
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D").arg(&data).arg("-p").arg(port.to_string());
        let mut all = vec![
            "listen_addresses=127.0.0.1".to_string(),
            format!("unix_socket_directories={}", data.display()),
            "wal_level=logical".into(),
            "max_wal_senders=10".into(),
            "max_replication_slots=10".into(),
            "fsync=off".into(),
            "synchronous_commit=on".into(),
        ];
        all.extend(settings.iter().map(|s| s.to_string()));
        for s in all {
            cmd.arg("-c").arg(s);
        }
        cmd.stdout(Stdio::null())
            .stderr(logf.try_clone().expect("log fd"));
        as_pg(&mut cmd);
        let mut child = cmd.spawn().expect("start postgres");
        let ready_bin = bin.join("pg_isready");
        wait_ready(&mut child, "postgres", &log, || {
            Command::new(&ready_bin)
                .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-p"])
                .arg(port.to_string())
                .status()
                .is_ok_and(|s| s.success())
        });
        Postgres {
            child,
            dir,
            port,
            bin,
        }
    }

    /// A connection URL for `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with psql; returns unaligned, tuples-only output. Panics on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
            ])
            .arg(self.port.to_string())
            .args(["-d", db, "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on `{sql}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop(&mut self.child, libc::SIGINT, Duration::from_secs(10)); // fast shutdown
    }
}

/// A throwaway Redis server.
pub struct Redis {
    child: Child,
    dir: tempfile::TempDir,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    bin: String,
    args: Vec<String>,
}

impl Redis {
    /// Starts `redis-server` with no persistence; ready when it returns.
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// As [`Redis::start`], with extra arguments (`["--requirepass", "x"]`).
    pub fn start_with(args: &[&str]) -> Redis {
        let bin = std::env::var("TIDEMARK_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        Redis::start_bin(&bin, args)
    }

    /// As [`Redis::start_with`], with the server binary `bin`.
    pub fn start_bin(bin: &str, args: &[&str]) -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("tidemark-redis-")
            .tempdir()
            .expect("temp dir");
        Redis::start_in(bin, args, dir, free_port())
    }

    /// Stops the server and starts the same binary again on the same port and
    /// directory (no persistence: an empty dataset and a new replication id).
    pub fn restart(&mut self) {
        stop(&mut self.child, libc::SIGTERM, Duration::from_secs(10));
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.child = spawn_redis(&self.bin, &args, self.dir.path(), self.port);
    }

    /// The server's working directory (`dump.rdb` after `SAVE`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn start_in(bin: &str, args: &[&str], dir: tempfile::TempDir, port: u16) -> Redis {
        let child = spawn_redis(bin, args, dir.path(), port);
        Redis {
            child,
            dir,
            port,
            bin: bin.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }
}

/// Starts a Redis-compatible server and waits until it answers PING.
fn spawn_redis(bin: &str, args: &[&str], dir: &Path, port: u16) -> Child {
    let log = dir.join("server.log");
    let mut child = Command::new(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}; apt-get install redis-server or set TIDEMARK_REDIS_SERVER"));
    let auth: Vec<String> = args
        .windows(2)
        .find(|w| w[0] == "--requirepass")
        .map(|w| vec!["AUTH".to_string(), w[1].to_string()])
        .unwrap_or_default();
    wait_ready(&mut child, "redis-server", &log, || {
        let Ok(mut c) = RespClient::connect(port) else {
            return false;
        };
        if !auth.is_empty()
            && c.cmd(&auth.iter().map(String::as_str).collect::<Vec<_>>())
                .is_err()
        {
            return false;
        }
        c.cmd(&["PING"]).is_ok_and(|r| r == "PONG")
    });
    child
}

impl Redis {
    /// A client on this server.
    pub fn client(&self) -> RespClient {
        RespClient::connect(self.port).expect("connect to redis")
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        stop(&mut self.child, libc::SIGTERM, Duration::from_secs(10));
    }
}

/// A minimal RESP2 client for test set-up and checks.
pub struct RespClient {
    reader: BufReader<TcpStream>,
}

impl RespClient {
    /// Connects to 127.0.0.1:`port`.
    pub fn connect(port: u16) -> std::io::Result<RespClient> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(RespClient {
            reader: BufReader::new(s),
        })
    }

    /// Sends one command; returns the reply flattened to text (arrays joined by
    /// newlines, nil as `(nil)`), or the server's error as `Err`.
    pub fn cmd(&mut self, args: &[&str]) -> Result<String, String> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        self.reader
            .get_mut()
            .write_all(&req)
            .map_err(|e| e.to_string())?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let line = line.trim_end_matches("\r\n");
        let (tag, rest) = line.split_at(line.len().min(1));
        match tag {
            "+" | ":" => Ok(rest.to_string()),
            "-" => Err(rest.to_string()),
            "$" => {
                let n: i64 = rest
                    .parse()
                    .map_err(|_| format!("bad bulk length {rest}"))?;
                if n < 0 {
                    return Ok("(nil)".into());
                }
                let mut buf = vec![0u8; n as usize + 2];
                self.reader
                    .read_exact(&mut buf)
                    .map_err(|e| e.to_string())?;
                buf.truncate(n as usize);
                Ok(String::from_utf8_lossy(&buf).into_owned())
            }
            "*" => {
                let n: i64 = rest
                    .parse()
                    .map_err(|_| format!("bad array length {rest}"))?;
                let items: Result<Vec<String>, String> =
                    (0..n.max(0)).map(|_| self.read_reply()).collect();
                Ok(items?.join("\n"))
            }
            _ => Err(format!("unexpected reply `{line}`")),
        }
    }
}

/// A Redis-compatible server binary named by the environment variable `var`
/// (`.ci/run` sets them), else `default` when given. `None`, after printing a
/// SKIP line naming the variable, when there is none: the caller returns.
pub fn server_bin(var: &str, default: Option<&str>) -> Option<String> {
    match std::env::var(var) {
        Ok(p) if Path::new(&p).exists() => Some(p),
        Ok(p) => {
            skip(&format!("{var}={p} does not exist"));
            None
        }
        Err(_) => match default {
            Some(d) => Some(d.to_string()),
            None => {
                skip(&format!("set {var} to run this test (.ci/run sets it)"));
                None
            }
        },
    }
}

/// Redis 7.0 (Debian's `redis-server`, or `$TIDEMARK_REDIS_SERVER`).
pub fn redis70() -> Option<String> {
    server_bin("TIDEMARK_REDIS_SERVER", Some("redis-server"))
}

/// Prints `SKIP: <why>` straight to the process's stderr, past libtest's output
/// capture, so a skipped test is visible in a normal `cargo test` run.
fn skip(why: &str) {
    use std::io::Write as _;
    let name = std::thread::current().name().unwrap_or("test").to_string();
    let _ = writeln!(std::io::stderr(), "SKIP: {name}: {why}");
}
