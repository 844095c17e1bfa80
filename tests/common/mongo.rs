//! The MongoDB stand-in: a SecantusDB 0.7.0b3 server (`$TIDEMARK_SECANTUSD`, which
//! `.ci/run` installs) on a random loopback port in a temp dir, stopped on `Drop`.
//! It is NOT mongod: every test using it says so in its name and output.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ::tidemark::sandbox::{free_port, stop_child, wait_ready};

/// The stand-in's launcher, or `None` after a SKIP line (a failure under CI=true).
pub fn secantusd_bin() -> Option<PathBuf> {
    match std::env::var_os("TIDEMARK_SECANTUSD") {
        Some(p) if PathBuf::from(&p).exists() => Some(PathBuf::from(p)),
        Some(p) => {
            super::skip(&format!(
                "TIDEMARK_SECANTUSD={} does not exist",
                p.to_string_lossy()
            ));
            None
        }
        None => {
            super::skip("no MongoDB stand-in: set TIDEMARK_SECANTUSD to SecantusDB's secantusd-py (.ci/run installs it)");
            None
        }
    }
}

/// A throwaway SecantusDB server (one-node replica set `secantus`).
pub struct StandIn {
    child: Child,
    _dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl StandIn {
    /// Starts one with `args` added (`--oplog-max-entries N`); ready when it
    /// answers on its port.
    pub fn start(args: &[&str]) -> Option<StandIn> {
        let bin = secantusd_bin()?;
        eprintln!(
            "MongoDB stand-in: SecantusDB ({}), not mongod",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("tidemark-secantus-")
            .tempdir()
            .expect("temp dir");
        let port = free_port().expect("free port");
        let log = dir.path().join("server.log");
        let logf = std::fs::File::create(&log).expect("log");
        let mut child = Command::new(&bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--storage-path",
            ])
            .arg(dir.path().join("data"))
            .arg("--enable-test-commands")
            // A no-op oplog entry every second, as mongod writes one every 10 s on a
            // replica set: what moves an idle stream's postBatchResumeToken.
            .args(["--noop-heartbeat-seconds", "1"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log fd"))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        wait_ready(&mut child, "secantusd-py", &log, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Some(StandIn {
            child,
            _dir: dir,
            port,
        })
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?replicaSet=secantus", self.port)
    }

    /// A driver client on it.
    pub async fn client(&self) -> mongodb::Client {
        mongodb::Client::with_uri_str(self.url())
            .await
            .expect("client")
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(10));
    }
}
