//! A Redis Sentinel (`redis-server FILE --sentinel`: no package beyond
//! `redis-server`) on a random loopback port in a temp dir, stopped on `Drop`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ::tidemark::sandbox::{free_port, stop_child, wait_ready};

use super::RespClient;

/// A Sentinel monitoring one primary as `m`, quorum 1, quick to act.
pub struct Sentinel {
    child: Child,
    /// Its (plain) port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    /// Starts `bin --sentinel` monitoring 127.0.0.1:`primary`; `extra`: more
    /// lines for its configuration file (TLS settings).
    pub fn start(bin: &str, primary: u16, extra: &str) -> Sentinel {
        let dir = tempfile::Builder::new()
            .prefix("tidemark-sentinel-")
            .tempdir()
            .expect("temp dir");
        let port = free_port().expect("port");
        let conf = dir.path().join("sentinel.conf");
        let log = dir.path().join("sentinel.log");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\n\
                 sentinel monitor m 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds m 1000\n\
                 sentinel failover-timeout m 5000\n\
                 sentinel parallel-syncs m 1\n{extra}",
                dir.path().display(),
                log.display()
            ),
        )
        .expect("sentinel.conf");
        let mut child = Command::new(bin)
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server --sentinel");
        wait_ready(&mut child, "sentinel", &log, || {
            RespClient::connect(port).is_ok_and(|mut c| c.cmd(&["PING"]).is_ok_and(|r| r == "PONG"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Sentinel {
            child,
            port,
            _dir: dir,
        }
    }

    /// The port of the primary Sentinel names now.
    pub fn primary(&self) -> Option<u16> {
        let r = RespClient::connect(self.port)
            .ok()?
            .cmd(&["SENTINEL", "get-master-addr-by-name", "m"])
            .ok()?;
        r.lines().nth(1)?.parse().ok()
    }

    /// Whether Sentinel knows the replica on `port`.
    pub fn knows_replica(&self, port: u16) -> bool {
        RespClient::connect(self.port)
            .ok()
            .and_then(|mut c| c.cmd(&["SENTINEL", "replicas", "m"]).ok())
            .is_some_and(|r| r.lines().any(|l| l == format!("127.0.0.1:{port}")))
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(10));
    }
}
