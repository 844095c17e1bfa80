//! Applying as the target's primary: the target becomes a replica of tidemark for
//! the length of the restore, so history reaches it with replica semantics.
//!
//! A replica never expires keys itself (it waits for its primary's `DEL`) and
//! accepts every form of a command a primary propagates (`XTRIM .. = .. LIMIT`,
//! which a client may not send). Replaying as a client has neither property.
//!
//! The exchange, in order:
//! 1. On the control connection: the target's `masterauth` is set to a one-time
//!    token and its `repl-diskless-load` to `on-empty-db` (the old values are kept
//!    in memory and put back at the end), its error counters are read, and it is
//!    told `REPLICAOF <tidemark> <port>`.
//! 2. tidemark accepts the target's replication link on a listener of its own
//!    (the local address of the control connection, or `--listen`), checks the
//!    token (or, where `CONFIG` is refused, the peer address), answers the
//!    handshake and `PSYNC` with `+FULLRESYNC <random id> 0`.
//! 3. The base image as an RDB ([`crate::connectors::redis::rdb::write`]),
//!    delimited by a random end mark (the `EOF:` form every supported replica
//!    reads), then, once the target acknowledged loading it, the records an RDB 9
//!    cannot hold and the journaled commands up to the moment, as a replication
//!    stream.
//! 4. `REPLCONF GETACK` until the target's acknowledged offset reaches the end of
//!    the stream: it has applied everything. Its error counters are read again:
//!    a replica does not answer its primary, so a command it refused shows only
//!    there, and fails the restore.
//! 5. The digest is read while the target still follows tidemark (nothing has
//!    expired on it since the moment), then `REPLICAOF NO ONE` and the old
//!    `masterauth`. Keys whose expiry fell between the moment and now expire as
//!    soon as it is a primary again, as they would have on the source.
//!
//! Whatever fails after step 1, a guard promotes the target and restores its
//! `masterauth`, so it is never left following a tidemark that is gone.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::commands::{self, CommandSink};
use super::{Progress, Summary};
use crate::config::Timeouts;
use crate::connectors::redis::digest::{self, DatasetDigest};
use crate::connectors::redis::rdb::write::{self, RdbWriter};
use crate::connectors::redis::resp::{self, Conn, Reply};
use crate::connectors::redis::RedisError;
use crate::journal::Journal;
use crate::restore::{RestoreError, RestorePlan};

/// Why the target cannot follow tidemark; nothing of it was changed. The caller
/// may fall back to applying as a client.
#[derive(Debug)]
pub(super) struct CannotFollow(pub String);

/// What applying as the primary produced besides the summary.
pub(super) struct Followed {
    /// The target's digest, read while it still followed tidemark.
    pub digest: DatasetDigest,
    /// `DEBUG DIGEST` at the same point, where the server allows `DEBUG`.
    pub server_digest: Option<String>,
    /// Keys the target held at the moment whose expiry has passed since: held
    /// until promotion (so not in `digest`), then expired by the target.
    pub expired_since: u64,
    /// When the target had applied the whole history (before the digests).
    pub applied_at: Instant,
}

/// What to restore, and how the link is served.
pub(super) struct Job<'a> {
    pub journal: &'a Journal,
    pub plan: &'a RestorePlan,
    pub timeouts: &'a Timeouts,
    /// `--listen`.
    pub listen: Option<&'a str>,
}

/// Restores the job's plan into the target behind `ctl` (a primary, already
/// checked) by serving it the replication protocol. `version`: its (major,
/// minor).
pub(super) fn apply(
    job: &Job<'_>,
    ctl: Conn,
    version: (u32, u32),
    summary: &mut Summary,
    progress: &mut Progress<'_>,
) -> Result<Result<Followed, CannotFollow>, RestoreError> {
    let Job {
        journal,
        plan,
        timeouts,
        listen,
    } = *job;
    let target_ip = ctl
        .stream()
        .peer_addr()
        .map_err(|e| RedisError::io(ctl.addr(), e))?
        .ip();
    let listener = listen_on(&ctl, listen)?;
    let announce = listener.local_addr().map_err(|e| listen_error(listen, e))?;
    let mut guard = Following::new(ctl);
    let errors_before = error_counts(&mut guard.ctl)?;
    guard.take_settings()?;
    let reply = guard.ctl.request(&[
        "REPLICAOF",
        &announce.ip().to_string(),
        &announce.port().to_string(),
    ])?;
    if let Reply::Error(e) = reply {
        guard.release()?;
        return Ok(Err(CannotFollow(format!("it refused REPLICAOF: {e}"))));
    }
    guard.following = true;
    let Some(link) = accept(&listener, target_ip, guard.token.as_deref(), timeouts)? else {
        guard.release()?;
        return Ok(Err(CannotFollow(format!(
            "it did not connect back to tidemark at {announce} within {}s (a firewall or NAT between them?); give `--listen` an address it can reach",
            timeouts.connect.as_secs()
        ))));
    };
    let addr = guard.ctl.addr().to_string();
    let mut link = Link::start(link, &addr, timeouts)?;
    let t = Instant::now();
    let deferred = send_image(journal, plan, &mut link, summary, progress)?;
    let sent = t.elapsed();
    link.wait_loaded(timeouts)?;
    tracing::info!(target = %addr, keys = summary.keys, sent_s = sent.as_secs_f64(), loaded_s = t.elapsed().as_secs_f64(), "the target loaded the base image");
    let mut stream = link.stream();
    if deferred {
        send_deferred(journal, plan, &mut stream, version.0, summary, progress)?;
    }
    commands::replay_events(journal, plan, &mut stream, summary, progress)?;
    stream.wait_applied(timeouts)?;
    tracing::info!(target = %addr, commands = summary.commands, bytes = stream.offset, total_s = t.elapsed().as_secs_f64(), "the target applied the history");
    let errors_after = error_counts(&mut guard.ctl)?;
    if let Some(refused) = refused(&errors_before, &errors_after) {
        return Err(RestoreError::Apply(format!(
            "the target refused commands of the replicated history ({refused}; its log names them); the target is partly restored: fix the cause and restore again with --force"
        )));
    }
    let applied_at = Instant::now();
    let followed = read_digests(&mut guard.ctl, timeouts, applied_at)?;
    guard.release()?;
    drop(stream);
    Ok(Ok(followed))
}

/// The listener the target connects to: `--listen` (`host[:port]`) or the local
/// address of the control connection (the address the target sees tidemark at),
/// on any free port.
fn listen_on(ctl: &Conn, listen: Option<&str>) -> Result<TcpListener, RestoreError> {
    let addr: SocketAddr = match listen {
        Some(l) => {
            let with_port = if l.rsplit_once(':').is_some_and(|(h, p)| {
                !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok()
            }) {
                l.to_string()
            } else {
                format!("{l}:0")
            };
            with_port
                .to_socket_addrs()
                .map_err(|e| listen_error(listen, e))?
                .next()
                .ok_or_else(|| {
                    RestoreError::Target(format!(
                        "--listen {l}: the host resolves to no address; give an IP address of this machine that the target can reach"
                    ))
                })?
        }
        None => {
            let ip = ctl
                .stream()
                .local_addr()
                .map_err(|e| RedisError::io(ctl.addr(), e))?
                .ip();
            SocketAddr::new(ip, 0)
        }
    };
    TcpListener::bind(addr).map_err(|e| listen_error(listen, e))
}

fn listen_error(listen: Option<&str>, e: std::io::Error) -> RestoreError {
    RestoreError::Target(format!(
        "cannot listen for the target's replication link on {}: {e}; give --listen an address of this machine (host[:port]) that the target can reach",
        listen.unwrap_or("the control connection's local address")
    ))
}

/// Waits for the target's replication link: the first connection from it that
/// authenticates with `token` (or, without a token, comes from `target_ip`), its
/// handshake answered up to `PSYNC`. `None` if none came within the connect
/// timeout.
fn accept(
    listener: &TcpListener,
    target_ip: IpAddr,
    token: Option<&str>,
    timeouts: &Timeouts,
) -> Result<Option<TcpStream>, RestoreError> {
    let deadline = Instant::now() + timeouts.connect.max(Duration::from_secs(3));
    listener
        .set_nonblocking(true)
        .map_err(|e| listen_error(None, e))?;
    while Instant::now() < deadline {
        let (sock, peer) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(listen_error(None, e)),
        };
        if token.is_none() && peer.ip() != target_ip {
            tracing::warn!(%peer, "refused a replication link that is not from the restore target");
            continue;
        }
        match handshake(sock, token, timeouts) {
            Ok(Some(s)) => return Ok(Some(s)),
            Ok(None) => {
                tracing::warn!(%peer, "refused a replication link without the one-time password")
            }
            Err(e) => tracing::warn!(%peer, error = %e, "a replication link failed its handshake"),
        }
    }
    Ok(None)
}

/// Answers the replica's handshake up to `PSYNC`/`SYNC`; `None` when it did not
/// authenticate with `token`.
fn handshake(
    sock: TcpStream,
    token: Option<&str>,
    timeouts: &Timeouts,
) -> Result<Option<TcpStream>, RedisError> {
    let peer = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let io = |e| RedisError::io(&peer, e);
    sock.set_nonblocking(false).map_err(io)?;
    sock.set_nodelay(true).map_err(io)?;
    sock.set_read_timeout(Some(timeouts.read)).map_err(io)?;
    let mut r = BufReader::new(sock.try_clone().map_err(io)?);
    let mut w = sock;
    let mut authed = token.is_none();
    loop {
        let args = read_command(&mut r, &peer)?;
        let name = args
            .first()
            .map(|a| a.to_ascii_uppercase())
            .unwrap_or_default();
        let answer: &[u8] = match name.as_slice() {
            b"AUTH" => {
                // Without a token (CONFIG refused) the peer address was checked.
                authed = token.is_none_or(|t| args.last().map(Vec::as_slice) == Some(t.as_bytes()));
                if !authed {
                    let _ = w.write_all(b"-WRONGPASS invalid password\r\n");
                    return Ok(None);
                }
                b"+OK\r\n"
            }
            // A replica pings before it authenticates and takes NOAUTH as the
            // cue to send AUTH; anything else unauthenticated ends the link.
            b"PING" if !authed => b"-NOAUTH Authentication required.\r\n",
            _ if !authed => {
                let _ = w.write_all(b"-NOAUTH Authentication required.\r\n");
                return Ok(None);
            }
            b"PING" => b"+PONG\r\n",
            b"REPLCONF" => b"+OK\r\n",
            b"PSYNC" | b"SYNC" => return Ok(Some(w)),
            _ => b"-ERR tidemark serves only the replication handshake\r\n",
        };
        w.write_all(answer).map_err(io)?;
    }
}

/// One command from a replica: a RESP array of bulk strings; the bare newlines a
/// replica sends while it loads are skipped.
fn read_command<R: std::io::BufRead>(r: &mut R, peer: &str) -> Result<Vec<Vec<u8>>, RedisError> {
    loop {
        let buf = r.fill_buf().map_err(|e| RedisError::io(peer, e))?;
        match buf.first() {
            None => {
                return Err(RedisError::io(
                    peer,
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"),
                ))
            }
            Some(b'\n' | b'\r') => r.consume(1),
            Some(_) => break,
        }
    }
    Ok(resp::read_reply(r, peer)?
        .into_array()
        .into_iter()
        .filter_map(Reply::into_bytes)
        .collect())
}

/// The replication link once `PSYNC` arrived: a writer, and a thread reading the
/// target's acknowledgements.
struct Link {
    out: BufWriter<TcpStream>,
    addr: String,
    acked: Arc<AtomicU64>,
    /// Set when the first acknowledgement arrived (the RDB is loaded).
    loaded: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Link {
    fn start(sock: TcpStream, addr: &str, timeouts: &Timeouts) -> Result<Link, RedisError> {
        let io = |e| RedisError::io(addr, e);
        // The target may take long to load a large RDB; it sends a newline each
        // second meanwhile, so the read timeout still bounds a dead link.
        sock.set_read_timeout(Some(timeouts.read.max(Duration::from_secs(5))))
            .map_err(io)?;
        let rsock = sock.try_clone().map_err(io)?;
        let (acked, loaded, closed) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (a, l, c, raddr) = (
            Arc::clone(&acked),
            Arc::clone(&loaded),
            Arc::clone(&closed),
            addr.to_string(),
        );
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(rsock);
            while let Ok(args) = read_command(&mut r, &raddr) {
                let is_ack = args.len() >= 3
                    && args[0].eq_ignore_ascii_case(b"REPLCONF")
                    && args[1].eq_ignore_ascii_case(b"ACK");
                if let (true, Some(off)) = (
                    is_ack,
                    std::str::from_utf8(args.get(2).map_or(&[][..], |v| v))
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok()),
                ) {
                    a.fetch_max(off, Ordering::AcqRel);
                    l.store(true, Ordering::Release);
                }
            }
            c.store(true, Ordering::Release);
        });
        let mut out = BufWriter::with_capacity(1 << 20, sock);
        let replid = random_hex(40)?;
        write!(out, "+FULLRESYNC {replid} 0\r\n").map_err(io)?;
        Ok(Link {
            out,
            addr: addr.to_string(),
            acked,
            loaded,
            closed,
            reader: Some(reader),
        })
    }

    /// Waits for the target's first acknowledgement after the RDB: it loaded it.
    fn wait_loaded(&mut self, timeouts: &Timeouts) -> Result<(), RestoreError> {
        self.out
            .flush()
            .map_err(|e| RedisError::io(&self.addr, e))?;
        while !self.loaded.load(Ordering::Acquire) {
            if self.closed.load(Ordering::Acquire) {
                return Err(RestoreError::Apply(format!(
                    "the target dropped the replication link while loading the base image (see its log{}); it holds a partial or empty dataset: restore again with --force",
                    if timeouts.read < Duration::from_secs(60) { "; a slow load can exceed [timeouts] read" } else { "" }
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// The command stream that follows the RDB.
    fn stream(self) -> ReplStream {
        ReplStream {
            link: self,
            db: None,
            offset: 0,
            enc: Vec::with_capacity(1 << 16),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.out.flush();
        let _ = self.out.get_ref().shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Writes the RDB of the plan's base image (an empty one without an image).
/// Returns whether any record was left for the command stream.
fn send_image(
    journal: &Journal,
    plan: &RestorePlan,
    link: &mut Link,
    summary: &mut Summary,
    progress: &mut Progress<'_>,
) -> Result<bool, RestoreError> {
    let mark = random_hex(40)?;
    let io = |e| RestoreError::from(RedisError::io(&link.addr, e));
    write!(link.out, "$EOF:{mark}\r\n").map_err(io)?;
    let mut rdb = RdbWriter::new(&mut link.out).map_err(io)?;
    let mut deferred = false;
    if let Some(image) = &plan.image {
        summary.final_position = image.position.clone();
        commands::each_chunk(journal, image, |chunk| {
            for rec in chunk.records {
                if !rec.key.is_empty() {
                    summary.keys += 1;
                }
                deferred |= !rdb.key(&rec).map_err(io)?;
            }
            progress.show(summary.keys, summary.commands)?;
            Ok(())
        })?;
    }
    let (out, _) = rdb.finish().map_err(io)?;
    out.write_all(mark.as_bytes()).map_err(io)?;
    Ok(deferred)
}

/// The image's records an RDB 9 does not hold, as commands.
fn send_deferred(
    journal: &Journal,
    plan: &RestorePlan,
    stream: &mut ReplStream,
    major: u32,
    summary: &mut Summary,
    progress: &mut Progress<'_>,
) -> Result<(), RestoreError> {
    let Some(image) = &plan.image else {
        return Ok(());
    };
    commands::each_chunk(journal, image, |chunk| {
        for rec in chunk.records {
            if !write::holds(&rec) {
                commands::write_record(stream, rec, major)?;
            }
        }
        progress.show(summary.keys, summary.commands)?;
        Ok(())
    })
}

/// The replication stream after the RDB; counts its bytes (the offset the target
/// acknowledges).
struct ReplStream {
    link: Link,
    db: Option<u32>,
    offset: u64,
    enc: Vec<u8>,
}

impl ReplStream {
    fn write<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), RedisError> {
        self.enc.clear();
        resp::encode_command(args, &mut self.enc);
        self.offset += self.enc.len() as u64;
        self.link
            .out
            .write_all(&self.enc)
            .map_err(|e| RedisError::io(&self.link.addr, e))
    }

    /// Asks for acknowledgements until the target has applied the whole stream.
    /// Waits as long as its offset advances; fails after the stall timeout
    /// without progress.
    fn wait_applied(&mut self, timeouts: &Timeouts) -> Result<(), RestoreError> {
        let end = self.offset;
        let mut last = (self.link.acked.load(Ordering::Acquire), Instant::now());
        let mut asked = Instant::now()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or_else(Instant::now);
        loop {
            let acked = self.link.acked.load(Ordering::Acquire);
            if acked >= end {
                return Ok(());
            }
            if self.link.closed.load(Ordering::Acquire) {
                return Err(self.partly("the target dropped the replication link"));
            }
            if acked != last.0 {
                last = (acked, Instant::now());
            } else if last.1.elapsed() > timeouts.stall {
                return Err(self.partly(&format!(
                    "the target acknowledged no progress for {}s (at {acked} of {end} bytes)",
                    timeouts.stall.as_secs()
                )));
            }
            if asked.elapsed() >= Duration::from_millis(200) {
                self.write(&["REPLCONF", "GETACK", "*"])?;
                self.link
                    .out
                    .flush()
                    .map_err(|e| RedisError::io(&self.link.addr, e))?;
                asked = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn partly(&self, what: &str) -> RestoreError {
        RestoreError::Apply(format!(
            "{what}; the target is partly restored: restore again with --force"
        ))
    }
}

impl CommandSink for ReplStream {
    fn send<A: AsRef<[u8]>>(&mut self, db: u32, args: &[A]) -> Result<(), RedisError> {
        if self.db != Some(db) {
            self.write(&["SELECT", &db.to_string()])?;
            self.db = Some(db);
        }
        self.write(args)
    }

    fn send_global<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), RedisError> {
        self.write(args)
    }
}

/// The control connection while the target follows tidemark. Dropping it before
/// [`Following::release`] promotes the target and puts back the settings it
/// changed.
struct Following {
    ctl: Conn,
    /// The one-time password the target authenticates its link with (`None`
    /// where `CONFIG` is refused).
    token: Option<String>,
    /// Settings to put back, as they were (`masterauth`, `repl-diskless-load`).
    saved: Vec<(&'static str, Vec<u8>)>,
    following: bool,
}

impl Following {
    fn new(ctl: Conn) -> Following {
        Following {
            ctl,
            token: None,
            saved: Vec::new(),
            following: false,
        }
    }

    /// Sets `masterauth` to a fresh token and `repl-diskless-load` to
    /// `on-empty-db` (the target, emptied, loads the RDB as it arrives rather
    /// than spooling it to disk first), keeping the old values.
    fn take_settings(&mut self) -> Result<(), RedisError> {
        let token = random_hex(32)?;
        if self.set("masterauth", token.as_bytes())? {
            self.token = Some(token);
        } else {
            tracing::warn!("the target refuses CONFIG SET masterauth; its replication link is accepted by address only");
        }
        self.set("repl-diskless-load", b"on-empty-db")?;
        Ok(())
    }

    /// `CONFIG SET name value`, keeping the old value; false where refused.
    fn set(&mut self, name: &'static str, value: &[u8]) -> Result<bool, RedisError> {
        let old = self.ctl.request(&["CONFIG", "GET", name])?.into_array();
        let Some(old) = old.into_iter().nth(1).and_then(Reply::into_bytes) else {
            return Ok(false);
        };
        let reply = self
            .ctl
            .request(&[b"CONFIG".as_slice(), b"SET", name.as_bytes(), value])?;
        if matches!(reply, Reply::Error(_)) {
            return Ok(false);
        }
        self.saved.push((name, old));
        Ok(true)
    }

    /// Promotes the target (if it follows) and puts its settings back.
    fn release(&mut self) -> Result<(), RedisError> {
        if self.following {
            self.ctl.call(&["REPLICAOF", "NO", "ONE"])?;
            self.following = false;
        }
        while let Some((name, old)) = self.saved.pop() {
            self.ctl
                .call(&[b"CONFIG".as_slice(), b"SET", name.as_bytes(), &old])?;
        }
        Ok(())
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::error!(error = %e, "could not promote the restore target back (run REPLICAOF NO ONE on it) or put its masterauth and repl-diskless-load back");
        }
    }
}

/// Error replies per kind (`INFO errorstats`), plus the total.
fn error_counts(ctl: &mut Conn) -> Result<Vec<(String, u64)>, RedisError> {
    let info = ctl
        .call(&["INFO", "errorstats"])?
        .text()
        .unwrap_or_default();
    Ok(info
        .lines()
        .filter_map(|l| {
            let (kind, rest) = l.strip_prefix("errorstat_")?.split_once(':')?;
            let n = rest.strip_prefix("count=")?.trim().parse().ok()?;
            Some((kind.to_string(), n))
        })
        .collect())
}

/// The error kinds counted between `before` and `after` (`WRONGTYPE: 2`).
fn refused(before: &[(String, u64)], after: &[(String, u64)]) -> Option<String> {
    let grown: Vec<String> = after
        .iter()
        .filter_map(|(k, n)| {
            let was = before.iter().find(|(b, _)| b == k).map_or(0, |(_, n)| *n);
            (*n > was).then(|| format!("{k}: {}", n - was))
        })
        .collect();
    (!grown.is_empty()).then(|| grown.join(", "))
}

/// The digests of the target while it follows tidemark.
fn read_digests(
    ctl: &mut Conn,
    timeouts: &Timeouts,
    applied_at: Instant,
) -> Result<Followed, RedisError> {
    // Both digests read the whole dataset; a large one takes longer than a reply
    // normally may.
    ctl.stream()
        .set_read_timeout(Some(timeouts.read.max(Duration::from_secs(600))))
        .map_err(|e| RedisError::io(ctl.addr(), e))?;
    let held: u64 = digest::keyspace(ctl)?.iter().map(|(_, n)| n).sum();
    let digest = digest::digest(ctl)?;
    let server_digest = match ctl.request(&["DEBUG", "DIGEST"])? {
        Reply::Simple(s) => Some(s),
        Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
        _ => None,
    };
    Ok(Followed {
        expired_since: held.saturating_sub(digest.keys),
        digest,
        server_digest,
        applied_at,
    })
}

/// `n` random hex characters (the replication id, the RDB end mark, the
/// one-time password).
fn random_hex(n: usize) -> Result<String, RedisError> {
    let mut bytes = vec![0u8; n.div_ceil(2)];
    if openssl::rand::rand_bytes(&mut bytes).is_err() {
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| RedisError::io("the system's random source", e))?;
    }
    let mut s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    s.truncate(n);
    Ok(s)
}
