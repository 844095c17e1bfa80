//! RESP2 on a blocking connection (plain TCP or TLS): a small request/reply
//! client (handshake, restore, digest, status) and an incremental parser of the
//! replication stream that reports exactly how many bytes each command took (the
//! replication offset is a byte count).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

pub use super::tls::Stream;
pub use super::url::RedisUrl;
use super::RedisError;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$n` (None: nil).
    Bulk(Option<Vec<u8>>),
    /// `*n` (None: nil).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (simple or bulk string), if it is one.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// The bytes of a bulk or simple string.
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Reply::Simple(s) => Some(s.into_bytes()),
            Reply::Bulk(Some(b)) => Some(b),
            Reply::Int(i) => Some(i.to_string().into_bytes()),
            _ => None,
        }
    }

    /// The elements of an array reply (empty for nil or a non-array).
    pub fn into_array(self) -> Vec<Reply> {
        match self {
            Reply::Array(Some(v)) => v,
            _ => Vec::new(),
        }
    }
}

/// Appends one command in RESP multibulk form to `out`.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Size in bytes of `args` in RESP multibulk form (what the command adds to the
/// replication offset).
pub fn encoded_len<A: AsRef<[u8]>>(args: &[A]) -> u64 {
    let digits = |n: usize| n.to_string().len() as u64;
    let mut n = 1 + digits(args.len()) + 2;
    for a in args {
        let l = a.as_ref().len();
        n += 1 + digits(l) + 2 + l as u64 + 2;
    }
    n
}

/// A blocking connection: requests and replies.
pub struct Conn {
    /// Buffered reads; writes go to the same stream (`reader.get_mut()`).
    pub reader: BufReader<Stream>,
    addr: String,
}

impl Conn {
    /// Connects (TLS handshake for `rediss://`) and authenticates as the URL
    /// says. `timeout` bounds the TCP connect and each read until it returns.
    pub fn connect(url: &RedisUrl, timeout: Duration) -> Result<Conn, RedisError> {
        let addr = url.addr();
        let connect_err = |e: std::io::Error| RedisError::Connect {
            addr: addr.clone(),
            detail: e.to_string(),
        };
        let sa = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(connect_err)?
            .next()
            .ok_or_else(|| RedisError::Connect {
                addr: addr.clone(),
                detail: "the host name resolves to no address".into(),
            })?;
        let s = TcpStream::connect_timeout(&sa, timeout).map_err(connect_err)?;
        s.set_nodelay(true).map_err(connect_err)?;
        s.set_read_timeout(Some(timeout)).map_err(connect_err)?;
        let stream = match &url.tls {
            None => Stream::Plain(s),
            Some(tls) => Stream::Tls(Box::new(tls.connect(s, &url.host).map_err(|error| {
                RedisError::Tls {
                    addr: addr.clone(),
                    error,
                }
            })?)),
        };
        let mut c = Conn {
            reader: BufReader::with_capacity(1 << 16, stream),
            addr,
        };
        if url.tls.is_some() {
            c.confirm_tls()?;
        }
        if let Some(pw) = &url.password {
            let reply = match &url.user {
                Some(u) => c.request(&[b"AUTH".as_slice(), u.as_bytes(), pw.as_bytes()])?,
                None => c.request(&[b"AUTH".as_slice(), pw.as_bytes()])?,
            };
            if let Reply::Error(e) = reply {
                return Err(RedisError::Auth {
                    addr: c.addr,
                    detail: e,
                });
            }
        }
        Ok(c)
    }

    /// One round trip right after the handshake. With TLS 1.3 a server checks
    /// the client's certificate after the client considers the handshake done,
    /// and its refusal arrives as an alert on the first read, or, when the
    /// server closes first, as a reset that can swallow the alert: turn either
    /// into a TLS error that says what to check, not a broken connection later.
    /// A bare reset or close stays transient (a server going down right then
    /// looks the same).
    fn confirm_tls(&mut self) -> Result<(), RedisError> {
        use std::io::ErrorKind as K;
        let closed = |addr: &str, e: Option<std::io::Error>| {
            let (reason, io) = match e.as_ref().and_then(super::tls::session_failure) {
                Some(alert) => (alert, false),
                None => (
                    format!(
                        "the server closed the session right after the handshake ({})",
                        e.map_or_else(|| "end of stream".to_string(), |e| e.to_string())
                    ),
                    true,
                ),
            };
            RedisError::Tls {
                addr: addr.to_string(),
                error: super::tls::TlsError::Handshake { reason, io },
            }
        };
        let sent = self.reader.get_mut().write_all(b"*1\r\n$4\r\nPING\r\n");
        let first = sent.and_then(|()| self.reader.fill_buf().map(|b| b.is_empty()));
        match first {
            Ok(false) => {}
            Ok(true) => return Err(closed(&self.addr, None)),
            Err(e)
                if super::tls::session_failure(&e).is_some()
                    || matches!(
                        e.kind(),
                        K::ConnectionReset
                            | K::ConnectionAborted
                            | K::BrokenPipe
                            | K::UnexpectedEof
                    ) =>
            {
                return Err(closed(&self.addr, Some(e)))
            }
            Err(e) => return Err(RedisError::io(&self.addr, e)),
        }
        // `+PONG`, or `-NOAUTH` before AUTH: either proves the session.
        self.read_reply().map(drop)
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The TCP socket (for timeouts and addresses; write through [`Conn::send_raw`]).
    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref().tcp()
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.reader.get_ref().is_tls()
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), RedisError> {
        let addr = self.addr.clone();
        self.reader
            .get_mut()
            .write_all(bytes)
            .map_err(|e| RedisError::io(&addr, e))
    }

    /// Sends one command and reads its reply (server errors are `Reply::Error`).
    pub fn request<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Reply, RedisError> {
        let mut buf = Vec::new();
        encode_command(args, &mut buf);
        self.send_raw(&buf)?;
        self.read_reply()
    }

    /// As [`Conn::request`], turning a server error into [`RedisError::Server`].
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Reply, RedisError> {
        match self.request(args)? {
            Reply::Error(e) if e.starts_with("NOAUTH") => Err(RedisError::Auth {
                addr: self.addr.clone(),
                detail: "the server requires a password and the url has none".into(),
            }),
            Reply::Error(e) => Err(RedisError::Server {
                addr: self.addr.clone(),
                command: args
                    .first()
                    .map(|a| String::from_utf8_lossy(a.as_ref()).to_uppercase())
                    .unwrap_or_default(),
                detail: e,
            }),
            r => Ok(r),
        }
    }

    /// Reads one reply.
    pub fn read_reply(&mut self) -> Result<Reply, RedisError> {
        read_reply(&mut self.reader, &self.addr)
    }

    /// Reads one `\r\n`-terminated line (without the terminator).
    pub fn read_line(&mut self) -> Result<Vec<u8>, RedisError> {
        read_line(&mut self.reader, &self.addr)
    }
}

/// Reads one line from `r`, without `\r\n`.
pub fn read_line<R: BufRead>(r: &mut R, addr: &str) -> Result<Vec<u8>, RedisError> {
    let mut line = Vec::new();
    let n = r
        .read_until(b'\n', &mut line)
        .map_err(|e| RedisError::io(addr, e))?;
    if n == 0 {
        return Err(RedisError::io(
            addr,
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"),
        ));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(line)
}

/// Reads one reply from `r`.
pub fn read_reply<R: BufRead>(r: &mut R, addr: &str) -> Result<Reply, RedisError> {
    let line = read_line(r, addr)?;
    let proto = |what: &str| RedisError::Protocol {
        addr: addr.to_string(),
        detail: what.to_string(),
    };
    let (tag, rest) = line
        .split_first()
        .ok_or_else(|| proto("empty reply line"))?;
    let rest = String::from_utf8_lossy(rest).into_owned();
    let int = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| proto(&format!("bad integer `{s}`")))
    };
    Ok(match tag {
        b'+' => Reply::Simple(rest),
        b'-' => Reply::Error(rest),
        b':' => Reply::Int(int(&rest)?),
        b'$' => {
            let n = int(&rest)?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf)
                .map_err(|e| RedisError::io(addr, e))?;
            buf.truncate(n as usize);
            Reply::Bulk(Some(buf))
        }
        b'*' => {
            let n = int(&rest)?;
            if n < 0 {
                return Ok(Reply::Array(None));
            }
            let mut v = Vec::with_capacity((n as usize).min(4096));
            for _ in 0..n {
                v.push(read_reply(r, addr)?);
            }
            Reply::Array(Some(v))
        }
        _ => {
            return Err(proto(&format!(
                "unexpected reply `{}`",
                lossy_prefix(&line)
            )))
        }
    })
}

fn lossy_prefix(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(40)]).into_owned()
}

/// A parsed command's arguments and the bytes it took.
pub type Parsed = (Vec<Vec<u8>>, usize);

/// Parses one multibulk command from the start of `buf`: `Ok(None)` if `buf`
/// does not hold a whole command yet, else the arguments and the bytes consumed.
pub fn parse_command(buf: &[u8]) -> Result<Option<Parsed>, String> {
    let Some(first) = buf.first() else {
        return Ok(None);
    };
    if *first != b'*' {
        return Err(format!(
            "expected a command array in the replication stream, got `{}`",
            lossy_prefix(buf)
        ));
    }
    let mut pos = 0;
    let Some(n) = header(buf, &mut pos, b'*')? else {
        return Ok(None);
    };
    let mut args = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let Some(len) = header(buf, &mut pos, b'$')? else {
            return Ok(None);
        };
        if buf.len() < pos + len + 2 {
            return Ok(None);
        }
        if &buf[pos + len..pos + len + 2] != b"\r\n" {
            return Err("bulk string not followed by CRLF in the replication stream".into());
        }
        args.push(buf[pos..pos + len].to_vec());
        pos += len + 2;
    }
    Ok(Some((args, pos)))
}

/// Reads `<tag><decimal>\r\n` at `*pos`; `Ok(None)` if incomplete.
fn header(buf: &[u8], pos: &mut usize, tag: u8) -> Result<Option<usize>, String> {
    let rest = &buf[*pos..];
    let Some(end) = rest.iter().position(|&b| b == b'\n') else {
        if rest.len() > 64 {
            return Err("overlong header in the replication stream".into());
        }
        return Ok(None);
    };
    if end < 2 || rest[0] != tag || rest[end - 1] != b'\r' {
        return Err(format!(
            "malformed header `{}` in the replication stream",
            lossy_prefix(&rest[..end])
        ));
    }
    let n = std::str::from_utf8(&rest[1..end - 1])
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .ok_or_else(|| format!("bad length in `{}`", lossy_prefix(&rest[..end])))?;
    *pos += end + 1;
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_incrementally_with_exact_sizes() {
        let mut buf = Vec::new();
        encode_command(&[b"SET".as_slice(), b"k", b"v\r\nx"], &mut buf);
        let total = buf.len();
        assert_eq!(
            encoded_len(&[b"SET".as_slice(), b"k", b"v\r\nx"]),
            total as u64
        );
        for cut in 0..total {
            assert_eq!(parse_command(&buf[..cut]).unwrap(), None, "cut {cut}");
        }
        let (args, used) = parse_command(&buf).unwrap().unwrap();
        assert_eq!(used, total);
        assert_eq!(args[2], b"v\r\nx");
        assert!(parse_command(b"+OK\r\n").is_err());
        assert!(parse_command(b"*1\r\n$x\r\n").is_err());
    }
}
