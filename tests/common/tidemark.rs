//! `tidemark run` as a child process of the test, with a config for one Redis
//! source named `cache`, and helpers to wait on what the journal holds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tidemark::journal::Journal;
use tidemark::position::PositionKind;
use tidemark::time::Timestamp;

use super::RespClient;

/// The binary under test: `$TIDEMARK_TEST_BIN` if set (a copy, for machines where
/// several checkouts share one cargo target dir and overwrite `target/debug/tidemark`),
/// else the one cargo built for this test.
pub fn bin() -> String {
    std::env::var("TIDEMARK_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tidemark").into())
}

/// A journal directory and config; `start` runs capture.
pub struct Tidemark {
    dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The journal directory.
    pub journal: PathBuf,
    child: Option<Child>,
    runs: u32,
}

impl Tidemark {
    /// A config capturing `url` as source `cache`.
    pub fn new(url: &str) -> Tidemark {
        let dir = tempfile::Builder::new()
            .prefix("tidemark-run-")
            .tempdir()
            .expect("temp dir");
        let journal = dir.path().join("journal");
        let config = dir.path().join("tidemark.toml");
        std::fs::write(
            &config,
            format!(
                "[journal]\npath = \"{}\"\nsync = \"always\"\n\n[[source]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"{url}\"\n",
                journal.display()
            ),
        )
        .expect("write config");
        Tidemark {
            dir,
            config,
            journal,
            child: None,
            runs: 0,
        }
    }

    /// The temp dir holding config, journal and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `tidemark run` (stderr to `run-N.log`).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.runs += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("run-{}.log", self.runs)))
            .expect("log file");
        let child = Command::new(bin())
            .arg("-c")
            .arg(&self.config)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tidemark run");
        self.child = Some(child);
    }

    /// The log of run number `n` (1-based).
    pub fn log(&self, n: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("run-{n}.log"))).unwrap_or_default()
    }

    /// SIGINT, then waits; panics unless it exits 0 within 30 s.
    pub fn stop(&mut self) {
        self.stop_with(libc::SIGINT);
    }

    /// As [`Tidemark::stop`] with signal `sig` (SIGINT or SIGTERM).
    pub fn stop_with(&mut self, sig: i32) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "tidemark run exited {status}; log:\n{}",
                    self.log(self.runs)
                );
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "tidemark run did not stop"
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

    /// Waits for the child to exit on its own; returns its stderr log.
    pub fn wait_exit(&mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, self.log(self.runs));
            }
            assert!(start.elapsed() < within, "tidemark run did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs another tidemark command with this config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run tidemark")
    }

    /// The journal's newest Redis checkpoint (replid, offset) and coverage.
    pub fn progress(&self) -> Option<(String, u64, Option<i64>)> {
        let j = Journal::open_read_only(&self.journal).ok()?;
        let info = j.source("cache").ok()?;
        let cp = j
            .checkpoints(info.id)
            .ok()?
            .into_iter()
            .max_by_key(|c| c.seq)?;
        match cp.position.kind? {
            PositionKind::Redis(p) => Some((p.replid, p.offset, info.stats.coverage_us)),
            _ => None,
        }
    }

    /// Waits until the journal holds everything the primary has sent
    /// (`master_repl_offset`) and its coverage has passed that moment.
    pub fn wait_caught_up(&self, primary: &mut RespClient) -> Timestamp {
        let start = Instant::now();
        let info = primary.cmd(&["INFO", "replication"]).expect("INFO");
        let target: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("master_repl_offset:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("master_repl_offset");
        let mut t: Option<Timestamp> = None;
        loop {
            if let Some((_, off, cov)) = self.progress() {
                if off >= target {
                    // Everything written so far is journaled by now: `t` is a
                    // moment whose state the caller can record.
                    let at = *t.get_or_insert_with(Timestamp::now);
                    if cov.is_some_and(|c| c >= at.as_micros()) {
                        return at;
                    }
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "journal did not catch up with offset {target}: {:?}; log:\n{}",
                self.progress(),
                self.log(self.runs)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tidemark {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
