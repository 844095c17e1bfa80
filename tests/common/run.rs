//! `tidemark run` as a child with any configuration, `status --json` and the
//! other commands against it: for tests of several sources and of supervision.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A journal directory, a config, and `tidemark run` when started.
pub struct Run {
    dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    child: Option<Child>,
    runs: u32,
}

/// A `[[source]]` section capturing the PostgreSQL database at `url` as `name`.
pub fn pg_source(name: &str, url: &str) -> String {
    format!("[[source]]\nname = \"{name}\"\nkind = \"postgres\"\nurl = \"{url}\"\n")
}

/// The binary under test.
pub fn bin() -> Command {
    let mut c = Command::new(super::tidemark::bin());
    c.env_remove("TIDEMARK_CONFIG").env("RUST_LOG", "info");
    c
}

impl Run {
    /// A config of `[journal]` (in a temp dir) plus `body` (sources, timeouts).
    pub fn new(body: &str) -> Run {
        let dir = tempfile::Builder::new()
            .prefix("tidemark-sup-")
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("tidemark.toml");
        std::fs::write(&config, format!("[journal]\npath = \"journal\"\n\n{body}"))
            .expect("config");
        Run {
            dir,
            config,
            child: None,
            runs: 0,
        }
    }

    /// The temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `tidemark run` with `args` after it (stderr to `run-N.log`).
    pub fn start(&mut self, args: &[&str]) {
        assert!(self.child.is_none(), "already running");
        self.runs += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("run-{}.log", self.runs)))
            .expect("log");
        self.child = Some(
            bin()
                .arg("-c")
                .arg(&self.config)
                .arg("run")
                .args(args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn run"),
        );
    }

    /// The log of the latest run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("run-{}.log", self.runs)))
            .unwrap_or_default()
    }

    /// SIGINT and wait; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.success();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "run did not stop; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then reaps it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits for `run` to exit by itself; its status and log.
    pub fn wait_exit(&mut self, within: Duration) -> (bool, String) {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status.success(), self.log());
            }
            assert!(
                start.elapsed() < within,
                "run did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Another command with this config.
    pub fn cli(&self, args: &[&str]) -> Output {
        bin()
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("tidemark")
    }

    /// `restore --source S --at T --target URL`, then `extra` flags.
    pub fn restore(&self, source: &str, at: &str, target: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "restore", "--source", source, "--at", at, "--target", target,
        ];
        args.extend_from_slice(extra);
        self.cli(&args)
    }

    /// `status --json`, if the journal can be read yet.
    pub fn status(&self) -> Option<Value> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The row of source `name` in `status --json`.
    pub fn source(&self, name: &str) -> Option<Value> {
        self.status()?["sources"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    }

    /// Waits until `pred` holds for source `name`'s status row.
    pub fn wait_source(
        &self,
        name: &str,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            if let Some(row) = self.source(name) {
                if pred(&row) {
                    return row;
                }
            }
            assert!(
                start.elapsed() < within,
                "source `{name}` never got {what}: {:?}; log:\n{}",
                self.source(name),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until source `name`'s coverage passed now.
    pub fn wait_covered(&self, name: &str) {
        let t = tidemark::time::Timestamp::now().to_rfc3339();
        self.wait_source(
            name,
            &format!("coverage past {t}"),
            Duration::from_secs(90),
            |r| r["coverage"].as_str().is_some_and(|c| c > t.as_str()),
        );
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TCP server that accepts connections and never answers: a black hole.
pub struct BlackHole {
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl BlackHole {
    /// Listens until the process ends, holding every accepted connection open.
    pub fn start() -> BlackHole {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in listener.incoming().flatten() {
                held.push(s);
            }
        });
        BlackHole { port }
    }
}

/// `tidemark digest URL --json` (with `extra` args): the overall digest.
pub fn digest(url: &str) -> String {
    let out = bin()
        .args(["digest", url, "--json"])
        .output()
        .expect("digest");
    assert!(
        out.status.success(),
        "digest {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v["overall"].as_str().expect("overall").to_string()
}

/// A TCP proxy to `127.0.0.1:upstream` that can be frozen: while frozen it neither
/// forwards bytes nor answers new connections, but keeps every socket open (a
/// half-open network, a walsender gone silent).
pub struct Proxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    /// Starts forwarding to `upstream`.
    pub fn start(upstream: u16) -> Proxy {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = std::sync::Arc::clone(&frozen);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let f = std::sync::Arc::clone(&f);
                std::thread::spawn(move || {
                    while f.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                        return;
                    };
                    let pipe =
                        |mut from: std::net::TcpStream,
                         mut to: std::net::TcpStream,
                         f: std::sync::Arc<std::sync::atomic::AtomicBool>| {
                            std::thread::spawn(move || {
                                let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
                                let mut buf = vec![0u8; 64 << 10];
                                loop {
                                    if f.load(Ordering::SeqCst) {
                                        std::thread::sleep(Duration::from_millis(20));
                                        continue;
                                    }
                                    match from.read(&mut buf) {
                                        Ok(0) => break,
                                        Ok(n) => {
                                            if to.write_all(&buf[..n]).is_err() {
                                                break;
                                            }
                                        }
                                        Err(e)
                                            if matches!(
                                                e.kind(),
                                                std::io::ErrorKind::WouldBlock
                                                    | std::io::ErrorKind::TimedOut
                                            ) => {}
                                        Err(_) => break,
                                    }
                                }
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            })
                        };
                    let (c2, s2) = (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    );
                    let a = pipe(client, s2, std::sync::Arc::clone(&f));
                    let b = pipe(server, c2, f);
                    let _ = a.join();
                    let _ = b.join();
                });
            }
        });
        Proxy { port, frozen }
    }

    /// Stops (true) or resumes (false) all traffic.
    pub fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}
