//! A binary-safe RESP2 test client with typed replies (from the RDB parser's
//! original test suite), and deterministic test data.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(i) => *i,
            other => panic!("expected integer, got {other:?}"),
        }
    }
    pub fn bulk(&self) -> Vec<u8> {
        match self {
            Resp::Bulk(Some(b)) => b.clone(),
            Resp::Simple(s) => s.clone().into_bytes(),
            other => panic!("expected bulk, got {other:?}"),
        }
    }
    pub fn array(&self) -> Vec<Resp> {
        match self {
            Resp::Array(Some(a)) => a.clone(),
            other => panic!("expected array, got {other:?}"),
        }
    }
    pub fn is_error(&self) -> bool {
        matches!(self, Resp::Error(_))
    }
}

pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

pub fn read_line<R: BufRead>(r: &mut R) -> std::io::Result<String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "eof",
        ));
    }
    while line.last() == Some(&b'\n') || line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn read_reply<R: BufRead>(r: &mut R) -> std::io::Result<Resp> {
    let line = read_line(r)?;
    let (t, rest) = line.split_at(1);
    Ok(match t {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(rest.parse().expect("int")),
        "$" => {
            let n: i64 = rest.parse().expect("bulk len");
            if n < 0 {
                Resp::Bulk(None)
            } else {
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Resp::Bulk(Some(buf))
            }
        }
        "*" => {
            let n: i64 = rest.parse().expect("array len");
            if n < 0 {
                Resp::Array(None)
            } else {
                let mut v = Vec::new();
                for _ in 0..n {
                    v.push(read_reply(r)?);
                }
                Resp::Array(Some(v))
            }
        }
        _ => panic!("unexpected reply line {line:?}"),
    })
}

pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Client {
    pub fn connect(port: u16) -> std::io::Result<Client> {
        let w = TcpStream::connect(("127.0.0.1", port))?;
        w.set_read_timeout(Some(Duration::from_secs(60)))?;
        let r = BufReader::new(w.try_clone()?);
        Ok(Client { r, w })
    }

    /// Sends a command and returns the reply (errors included).
    pub fn raw(&mut self, args: &[&[u8]]) -> Resp {
        self.w.write_all(&encode_command(args)).expect("write");
        read_reply(&mut self.r).expect("read reply")
    }

    /// Sends a command of string arguments; panics on an error reply.
    pub fn cmd(&mut self, args: &[&str]) -> Resp {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        let r = self.raw(&a);
        assert!(!r.is_error(), "{args:?} -> {r:?}");
        r
    }

    /// Like `cmd` but returns error replies instead of panicking.
    pub fn try_cmd(&mut self, args: &[&str]) -> Resp {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.raw(&a)
    }

    /// Splits into the reader half (e.g. to read a replication payload).
    pub fn into_parts(self) -> (BufReader<TcpStream>, TcpStream) {
        (self.r, self.w)
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible by LZF.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        let v = seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.truncate(len);
    out
}
