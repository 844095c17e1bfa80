//! RESP2 on a blocking TCP connection: the `redis://` URL, a small request/reply
//! client (handshake, restore, digest, status) and an incremental parser of the
//! replication stream that reports exactly how many bytes each command took (the
//! replication offset is a byte count).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::RedisError;

/// Where and how to connect, from a `redis://[user[:password]@]host[:port][/db]` URL.
/// `Debug` never shows the password.
#[derive(Clone)]
pub struct RedisUrl {
    /// Host name or address.
    pub host: String,
    /// TCP port (default 6379).
    pub port: u16,
    /// ACL user, if given.
    pub user: Option<String>,
    /// Password, if given. Never printed.
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis://{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis://{}:{}", self.host, self.port)
    }
}

impl RedisUrl {
    /// Parses a URL. `rediss://` is refused: TLS is not supported yet.
    pub fn parse(url: &str) -> Result<RedisUrl, RedisError> {
        let bad = |reason: &str| RedisError::Url {
            url: crate::config::redact_url(url),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected redis://host:port"))?;
        match scheme {
            "redis" => {}
            "rediss" => return Err(RedisError::TlsNotSupported),
            _ => return Err(bad("the scheme must be redis://")),
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (u, p) = match ui.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (ui, None),
                };
                let u = percent_decode(u).map_err(|_| bad("bad %-escape in the user"))?;
                let p = p
                    .map(percent_decode)
                    .transpose()
                    .map_err(|_| bad("bad %-escape in the password"))?;
                // `redis://:pw@host` is a password for the default user.
                ((!u.is_empty()).then_some(u), p.filter(|p| !p.is_empty()))
            }
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port must be a number from 1 to 65535"))?,
            ),
            _ => (hostport, 6379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(RedisUrl {
            host: host.to_string(),
            port,
            user,
            password,
        })
    }

    /// `host:port`, for messages.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn percent_decode(s: &str) -> Result<String, ()> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

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
    /// Buffered reads; the writer is the same socket.
    pub reader: BufReader<TcpStream>,
    addr: String,
}

impl Conn {
    /// Connects and authenticates as the URL says.
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
        let mut c = Conn {
            reader: BufReader::with_capacity(1 << 16, s),
            addr,
        };
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

    /// `host:port` of the server.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The socket (for timeouts and writes).
    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
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
    fn url_forms() {
        let u = RedisUrl::parse("redis://alice:p%40ss@db.local:6380/0").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.user.as_deref()),
            ("db.local", 6380, Some("alice"))
        );
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        let u = RedisUrl::parse("redis://:secret@127.0.0.1").unwrap();
        assert_eq!((u.user.clone(), u.port), (None, 6379));
        assert!(!format!("{u:?}").contains("secret"));
        assert!(matches!(
            RedisUrl::parse("rediss://h:1"),
            Err(RedisError::TlsNotSupported)
        ));
        assert!(RedisUrl::parse("redis://h:notaport").is_err());
    }

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
