//! Throwaway servers for `tidemark demo` and the tests: started from their binaries
//! on a random loopback port in a temp dir, ready when `start` returns (readiness is
//! polled, never slept for), stopped and removed on `Drop`.
//!
//! PostgreSQL: binaries from `$TIDEMARK_PG_BIN` or the newest
//! `/usr/lib/postgresql/*/bin`; `initdb` refuses root, so as root the server runs as
//! the `postgres` user.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `ready` until it returns true; fails with `what` and the log's tail on
/// timeout or if `child` exits.
pub fn wait_ready(
    child: &mut Child,
    what: &str,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    let tail = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    };
    loop {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited during start-up ({status}); log:\n{}",
                tail()
            ));
        }
        if start.elapsed() > READY_TIMEOUT {
            return Err(format!(
                "{what} not ready after {READY_TIMEOUT:?}; log:\n{}",
                tail()
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Sends `sig` to `child`, waits up to `grace`, then kills it.
pub fn stop_child(child: &mut Child, sig: i32, grace: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
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

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

/// What a [`Postgres`] gets before its first start, beyond initdb's defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct PgSetup<'a> {
    /// Extra `name=value` server settings.
    pub settings: &'a [&'a str],
    /// pg_hba.conf lines replacing initdb's (`trust` for everyone).
    pub hba: Option<&'a [&'a str]>,
    /// Files written into the data directory, mode 0600 and owned by the server's
    /// user (TLS keys: `ssl_key_file=server.key` is relative to it).
    pub files: &'a [(&'a str, &'a [u8])],
}

/// A throwaway PostgreSQL server with `wal_level=logical`.
pub struct Postgres {
    child: Child,
    dir: tempfile::TempDir,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    ids: Option<(u32, u32)>,
    settings: Vec<String>,
}

/// Starts `postgres` on `data` and waits until it accepts connections.
fn spawn_server(
    bin: &Path,
    data: &Path,
    port: u16,
    settings: &[String],
    ids: Option<(u32, u32)>,
    log: &Path,
) -> Result<Child, String> {
    let logf = std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .map_err(|e| format!("server log: {e}"))?;
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D").arg(data).arg("-p").arg(port.to_string());
    for s in settings {
        cmd.arg("-c").arg(s);
    }
    cmd.stdout(Stdio::null()).stderr(logf);
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
    let ready = bin.join("pg_isready");
    let ok = wait_ready(&mut child, "postgres", log, || {
        Command::new(&ready)
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(port.to_string())
            .status()
            .is_ok_and(|s| s.success())
    });
    if let Err(e) = ok {
        stop_child(&mut child, libc::SIGKILL, Duration::from_secs(1));
        return Err(e);
    }
    Ok(child)
}

impl Postgres {
    /// initdb + start; ready when it returns.
    pub fn start() -> Result<Postgres, String> {
        Postgres::start_with(&[])
    }

    /// As [`Postgres::start`], with extra `name=value` server settings.
    pub fn start_with(settings: &[&str]) -> Result<Postgres, String> {
        Postgres::start_setup(&PgSetup {
            settings,
            ..PgSetup::default()
        })
    }

    /// As [`Postgres::start`], set up as `setup` says.
    pub fn start_setup(setup: &PgSetup) -> Result<Postgres, String> {
        let settings = setup.settings;
        let bin = crate::connectors::postgres::image::pg_tool("initdb")
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if !bin.join("initdb").is_file() || !bin.join("postgres").is_file() {
            return Err("PostgreSQL server binaries (initdb, postgres) not found: install postgresql-15 or set TIDEMARK_PG_BIN".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("tidemark-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        // SAFETY: geteuid has no preconditions.
        let ids = if unsafe { libc::geteuid() } == 0 {
            Some(user_ids("postgres").ok_or(
                "running as root needs the `postgres` user (apt-get install postgresql-15)",
            )?)
        } else {
            None
        };
        let chown = |p: &Path| match ids {
            Some((uid, gid)) => std::os::unix::fs::chown(p, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", p.display())),
            None => Ok(()),
        };
        chown(dir.path())?;
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
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
        if let Some((uid, gid)) = ids {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if let Some(hba) = setup.hba {
            let path = data.join("pg_hba.conf");
            std::fs::write(&path, hba.join("\n") + "\n")
                .map_err(|e| format!("write {}: {e}", path.display()))?;
        }
        for (name, contents) in setup.files {
            use std::os::unix::fs::PermissionsExt;
            let path = data.join(name);
            std::fs::write(&path, contents)
                .map_err(|e| format!("write {}: {e}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("chmod {}: {e}", path.display()))?;
            chown(&path)?;
        }
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
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
        std::fs::File::create(&log).map_err(|e| format!("server log: {e}"))?;
        chown(&log)?;
        let child = spawn_server(&bin, &data, port, &all, ids, &log)?;
        Ok(Postgres {
            child,
            dir,
            port,
            bin,
            ids,
            settings: all,
        })
    }

    /// A connection URL for `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with psql; returns unaligned, tuples-only output.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = self
            .tool("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql])
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "psql failed on `{sql}`: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Runs SQL with psql; panics on error (for tests).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A command for one of the server's client tools, pointed at this server.
    pub fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        c.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres");
        c
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Restarts the server (same data, same port); ready when it returns.
    pub fn restart(&mut self) -> Result<(), String> {
        stop_child(&mut self.child, libc::SIGINT, Duration::from_secs(10));
        let log = self.dir.path().join("server.log");
        self.child = spawn_server(
            &self.bin,
            &self.data_dir(),
            self.port,
            &self.settings,
            self.ids,
            &log,
        )?;
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop_child(&mut self.child, libc::SIGINT, Duration::from_secs(10)); // fast shutdown
    }
}
