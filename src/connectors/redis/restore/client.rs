//! Applying as an ordinary client: every command pipelined on one connection, a
//! thread reading the replies. The fallback for targets that cannot become a
//! replica of tidemark (see [`super::primary`]): the target expires keys during
//! the replay, and refuses forms of commands only a primary may send.

use std::io::{BufReader, BufWriter, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::commands::CommandSink;
use crate::connectors::redis::resp::{self, Conn, Reply};
use crate::connectors::redis::RedisError;
use crate::restore::RestoreError;

/// Commands written without waiting; a thread reads the replies and keeps the
/// first errors.
pub(super) struct Pipeline {
    out: BufWriter<TcpStream>,
    addr: String,
    db: Option<u32>,
    sent: u64,
    expected: Arc<AtomicU64>,
    reader: Option<JoinHandle<Result<Vec<String>, RedisError>>>,
    enc: Vec<u8>,
}

impl Pipeline {
    pub(super) fn new(conn: Conn) -> Result<Pipeline, RedisError> {
        let addr = conn.addr().to_string();
        let sock = conn.reader.into_inner();
        let rsock = sock.try_clone().map_err(|e| RedisError::io(&addr, e))?;
        let expected = Arc::new(AtomicU64::new(u64::MAX));
        let (exp, raddr) = (Arc::clone(&expected), addr.clone());
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::with_capacity(1 << 16, rsock);
            let (mut n, mut errors) = (0u64, Vec::new());
            while n < exp.load(Ordering::Acquire) {
                if let Reply::Error(e) = resp::read_reply(&mut r, &raddr)? {
                    if errors.len() < 5 {
                        errors.push(format!("reply {}: {e}", n + 1));
                    }
                }
                n += 1;
            }
            Ok(errors)
        });
        Ok(Pipeline {
            out: BufWriter::with_capacity(1 << 20, sock),
            addr,
            db: None,
            sent: 0,
            expected,
            reader: Some(reader),
            enc: Vec::with_capacity(1 << 16),
        })
    }

    fn send_any(&mut self, args: &[&str]) -> Result<(), RedisError> {
        self.send_any_bytes(args)
    }

    fn send_any_bytes<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), RedisError> {
        self.enc.clear();
        resp::encode_command(args, &mut self.enc);
        self.out
            .write_all(&self.enc)
            .map_err(|e| RedisError::io(&self.addr, e))?;
        self.sent += 1;
        Ok(())
    }

    /// Flushes, waits for every reply, fails if any was an error.
    pub(super) fn finish(&mut self) -> Result<(), RestoreError> {
        self.expected.store(self.sent + 1, Ordering::Release);
        self.send_any(&["PING"])?;
        self.out
            .flush()
            .map_err(|e| RedisError::io(&self.addr, e))?;
        let errors = match self.reader.take().map(JoinHandle::join) {
            Some(Ok(r)) => r?,
            _ => return Err(RestoreError::Apply("the reply reader failed".into())),
        };
        if !errors.is_empty() {
            return Err(RestoreError::Apply(format!(
                "the target refused commands ({}); the target is partly restored: fix the cause and restore again with --force",
                errors.join("; ")
            )));
        }
        Ok(())
    }
}

impl CommandSink for Pipeline {
    fn send<A: AsRef<[u8]>>(&mut self, db: u32, args: &[A]) -> Result<(), RedisError> {
        if self.db != Some(db) {
            self.send_any(&["SELECT", &db.to_string()])?;
            self.db = Some(db);
        }
        self.send_any_bytes(args)
    }

    fn send_global<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), RedisError> {
        self.send_any_bytes(args)
    }
}
