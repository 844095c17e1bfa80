//! Applying as an ordinary client: every command pipelined on one connection.
//! The fallback for targets that cannot become a replica of tidemark (see
//! [`super::primary`]): the target expires keys during the replay, and refuses
//! forms of commands only a primary may send.
//!
//! Two ways to keep the pipe full, one per kind of connection:
//! - **plain TCP**: this thread writes through a 1 MiB buffer and a second thread
//!   reads the replies on a clone of the socket, so writing never waits for a
//!   reply;
//! - **TLS**: a TLS session is one state machine and cannot be split between
//!   threads, so this thread writes the commands in windows of 1 MiB and, before
//!   sending a window, reads the replies of the one before the last: the server
//!   always has a window to work on while tidemark encodes and encrypts the next,
//!   and at most two windows of replies wait in the socket (the server buffers
//!   any excess: it never stops reading because its replies are unread).

use std::collections::VecDeque;
use std::io::{BufReader, BufWriter, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::commands::CommandSink;
use crate::connectors::redis::resp::{self, Conn, Reply, Stream};
use crate::connectors::redis::RedisError;
use crate::restore::RestoreError;

/// Bytes of commands per window on a TLS connection.
const WINDOW: usize = 1 << 20;
/// Server errors kept for the report.
const KEEP_ERRORS: usize = 5;

/// Commands written without waiting for their replies; the first errors are kept.
pub(super) struct Pipeline {
    mode: Mode,
    addr: String,
    db: Option<u32>,
    sent: u64,
    enc: Vec<u8>,
}

enum Mode {
    /// Plain TCP: a thread reads the replies until `expected` of them came.
    Split {
        out: BufWriter<TcpStream>,
        expected: Arc<AtomicU64>,
        reader: Option<JoinHandle<Result<Vec<String>, RedisError>>>,
    },
    /// TLS: windows of commands, replies read one window behind.
    Windowed(Windowed),
}

struct Windowed {
    conn: Conn,
    /// Commands of the window being filled, and how many.
    out: Vec<u8>,
    filling: u64,
    /// Commands per window sent whose replies are not read yet, oldest first.
    in_flight: VecDeque<u64>,
    errors: Vec<String>,
    replied: u64,
}

impl Pipeline {
    pub(super) fn new(conn: Conn) -> Result<Pipeline, RedisError> {
        let addr = conn.addr().to_string();
        if conn.is_tls() {
            return Ok(Pipeline {
                mode: Mode::Windowed(Windowed {
                    conn,
                    out: Vec::with_capacity(WINDOW + (64 << 10)),
                    filling: 0,
                    in_flight: VecDeque::new(),
                    errors: Vec::new(),
                    replied: 0,
                }),
                addr,
                db: None,
                sent: 0,
                enc: Vec::new(),
            });
        }
        let Stream::Plain(sock) = conn.reader.into_inner() else {
            return Err(RedisError::Protocol {
                addr,
                detail: "a TLS connection taken for a plain one".into(),
            });
        };
        let rsock = sock.try_clone().map_err(|e| RedisError::io(&addr, e))?;
        let expected = Arc::new(AtomicU64::new(u64::MAX));
        let (exp, raddr) = (Arc::clone(&expected), addr.clone());
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::with_capacity(1 << 16, rsock);
            let (mut n, mut errors) = (0u64, Vec::new());
            while n < exp.load(Ordering::Acquire) {
                if let Reply::Error(e) = resp::read_reply(&mut r, &raddr)? {
                    if errors.len() < KEEP_ERRORS {
                        errors.push(format!("reply {}: {e}", n + 1));
                    }
                }
                n += 1;
            }
            Ok(errors)
        });
        Ok(Pipeline {
            mode: Mode::Split {
                out: BufWriter::with_capacity(1 << 20, sock),
                expected,
                reader: Some(reader),
            },
            addr,
            db: None,
            sent: 0,
            enc: Vec::with_capacity(1 << 16),
        })
    }

    fn send_any(&mut self, args: &[&str]) -> Result<(), RedisError> {
        self.send_any_bytes(args)
    }

    fn send_any_bytes<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), RedisError> {
        self.sent += 1;
        match &mut self.mode {
            Mode::Split { out, .. } => {
                self.enc.clear();
                resp::encode_command(args, &mut self.enc);
                out.write_all(&self.enc)
                    .map_err(|e| RedisError::io(&self.addr, e))
            }
            Mode::Windowed(w) => {
                resp::encode_command(args, &mut w.out);
                w.filling += 1;
                if w.out.len() >= WINDOW {
                    w.ship()?;
                    while w.in_flight.len() > 1 {
                        w.read_window()?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Flushes, waits for every reply, fails if any was an error.
    pub(super) fn finish(&mut self) -> Result<(), RestoreError> {
        if let Mode::Split { expected, .. } = &self.mode {
            // Before the last command: the reader stops after its reply.
            expected.store(self.sent + 1, Ordering::Release);
        }
        self.send_any(&["PING"])?;
        let errors = match &mut self.mode {
            Mode::Split { out, reader, .. } => {
                out.flush().map_err(|e| RedisError::io(&self.addr, e))?;
                match reader.take().map(JoinHandle::join) {
                    Some(Ok(r)) => r?,
                    _ => return Err(RestoreError::Apply("the reply reader failed".into())),
                }
            }
            Mode::Windowed(w) => {
                w.ship()?;
                while !w.in_flight.is_empty() {
                    w.read_window()?;
                }
                std::mem::take(&mut w.errors)
            }
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

impl Windowed {
    /// Sends the window being filled.
    fn ship(&mut self) -> Result<(), RedisError> {
        if self.filling == 0 {
            return Ok(());
        }
        self.conn.send_raw(&self.out)?;
        self.out.clear();
        self.in_flight.push_back(self.filling);
        self.filling = 0;
        Ok(())
    }

    /// Reads the replies of the oldest window in flight.
    fn read_window(&mut self) -> Result<(), RedisError> {
        let Some(n) = self.in_flight.pop_front() else {
            return Ok(());
        };
        for _ in 0..n {
            self.replied += 1;
            if let Reply::Error(e) = self.conn.read_reply()? {
                if self.errors.len() < KEEP_ERRORS {
                    self.errors.push(format!("reply {}: {e}", self.replied));
                }
            }
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
