//! Test harness: real servers started from their binaries on random loopback ports in
//! temp dirs, ready when `start` returns (readiness is polled, never slept for), and
//! stopped and removed on `Drop`.
//!
//! - PostgreSQL: `tidemark::sandbox::Postgres` (binaries from `$TIDEMARK_PG_BIN` or
//!   the newest `/usr/lib/postgresql/*/bin`), started with `wal_level=logical`.
//! - Redis: `$TIDEMARK_REDIS_SERVER` (default `redis-server` on `PATH`).
//! - tansu (Kafka-compatible broker): `$TIDEMARK_TANSU`, else `tansu` on `PATH`;
//!   `.ci/run` fetches it. Without either, Kafka tests print a SKIP line and pass,
//!   except under `CI=true`, where any missing server fails the test.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod bin_client;
pub mod kube;
pub mod mongo;
pub mod rdb_scenario;
pub mod sentinel;
pub mod tidemark;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ::tidemark::sandbox::{free_port, stop_child, wait_ready};

pub mod pgcapture;
pub mod pgcluster;
pub mod run;

/// A throwaway PostgreSQL server (the one `tidemark demo` uses).
pub struct Postgres(pub ::tidemark::sandbox::Postgres);

impl Postgres {
    /// initdb + start with logical replication enabled; ready when it returns.
    pub fn start() -> Postgres {
        Postgres::start_with(&[])
    }

    /// As [`Postgres::start`], with extra `name=value` server settings.
    pub fn start_with(settings: &[&str]) -> Postgres {
        Postgres(
            ::tidemark::sandbox::Postgres::start_with(settings).unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// Runs `pgbench` with `args`; panics with its stderr if it fails.
    #[allow(dead_code)]
    pub fn pgbench(&self, args: &[&str]) {
        let out = self.tool("pgbench").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// As [`Postgres::start`], with settings, pg_hba.conf and files in the data dir.
    pub fn start_setup(setup: &::tidemark::sandbox::PgSetup) -> Postgres {
        Postgres(
            ::tidemark::sandbox::Postgres::start_setup(setup).unwrap_or_else(|e| panic!("{e}")),
        )
    }
}

impl std::ops::Deref for Postgres {
    type Target = ::tidemark::sandbox::Postgres;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Postgres {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
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
        Redis::start_in(bin, args, dir, free_port().expect("free port"))
    }

    /// As [`Redis::start`] on a given port (a test that starts the server late).
    pub fn start_on(port: u16) -> Redis {
        let bin = std::env::var("TIDEMARK_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let dir = tempfile::Builder::new()
            .prefix("tidemark-redis-")
            .tempdir()
            .expect("temp dir");
        Redis::start_in(&bin, &[], dir, port)
    }

    /// Stops the server and starts the same binary again on the same port and
    /// directory (no persistence: an empty dataset and a new replication id).
    pub fn restart(&mut self) {
        stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(10));
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.child = spawn_redis(&self.bin, &args, self.dir.path(), self.port);
    }

    /// SIGKILL, as a crash: no shutdown, nothing saved, connections reset.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    })
    .unwrap_or_else(|e| panic!("{e}"));
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
        // Not after `kill9`: its pid may belong to another process by now.
        if matches!(self.child.try_wait(), Ok(None)) {
            stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(10));
        }
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

/// The tansu binary: `$TIDEMARK_TANSU`, else `tansu` on `PATH`.
pub fn tansu_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TIDEMARK_TANSU") {
        let p = PathBuf::from(p);
        assert!(p.exists(), "TIDEMARK_TANSU={} does not exist", p.display());
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tansu"))
            .find(|p| p.is_file())
    })
}

/// A throwaway tansu broker with in-memory storage.
pub struct Tansu {
    child: Child,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
}

impl Tansu {
    /// Starts a broker; ready (answers a Kafka ApiVersions request) when it returns.
    /// `None` (after printing a SKIP line naming `test`) when no tansu binary is
    /// available; CI always has one.
    pub fn start(test: &str) -> Option<Tansu> {
        let Some(bin) = tansu_bin() else {
            skip(&format!("{test}: no tansu broker; set TIDEMARK_TANSU to the tansu binary (.ci/run fetches it)"));
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("tidemark-tansu-")
            .tempdir()
            .expect("temp dir");
        let port = free_port().expect("free port");
        let url = format!("tcp://127.0.0.1:{port}");
        let log = dir.path().join("server.log");
        let logf = std::fs::File::create(&log).expect("server log");
        let mut child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(logf.try_clone().expect("log fd"))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        wait_ready(&mut child, "tansu", &log, || kafka_api_versions_ok(port))
            .unwrap_or_else(|e| panic!("{e}"));
        Some(Tansu {
            child,
            dir,
            bin,
            port,
        })
    }

    /// `host:port` of the broker.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `kafka://host:port`.
    pub fn url(&self) -> String {
        format!("kafka://{}", self.addr())
    }

    /// Creates a topic with `partitions` partitions using tansu's own CLI.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        self.create_topic_with(name, partitions, &[]);
    }

    /// As [`Tansu::create_topic`], with topic configs (`("retention.ms", "60000")`).
    pub fn create_topic_with(&self, name: &str, partitions: u32, configs: &[(&str, &str)]) {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["topic", "create", "--broker"])
            .arg(format!("tcp://{}", self.addr()))
            .args(["--partitions", &partitions.to_string(), name]);
        for (k, v) in configs {
            cmd.arg("--config").arg(format!("{k}={v}"));
        }
        let out = cmd.output().expect("run tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {name} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(5));
    }
}

/// Sends a Kafka ApiVersions v0 request and checks for a well-formed answer with
/// error code 0: the broker is up and speaking the protocol.
fn kafka_api_versions_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let client = b"ready";
    // header: api_key 18, version 0, correlation id 7, client id (int16 len + bytes)
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&7i32.to_be_bytes());
    body.extend_from_slice(&(client.len() as i16).to_be_bytes());
    body.extend_from_slice(client);
    let mut req = (body.len() as i32).to_be_bytes().to_vec();
    req.extend_from_slice(&body);
    if s.write_all(&req).is_err() {
        return false;
    }
    let mut head = [0u8; 10]; // length, correlation id, error code
    if s.read_exact(&mut head).is_err() {
        return false;
    }
    i32::from_be_bytes([head[4], head[5], head[6], head[7]]) == 7 && head[8] == 0 && head[9] == 0
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
/// capture, so a skipped test is visible in a normal `cargo test` run. Under CI
/// (`CI=true`) a missing server is a failure: a green CI means every test ran.
pub fn skip(why: &str) {
    use std::io::Write as _;
    let name = std::thread::current().name().unwrap_or("test").to_string();
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{name}: a server this test needs is missing, and CI=true forbids skipping: {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIP: {name}: {why}");
}
