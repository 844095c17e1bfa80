//! Redis URLs: one server (`redis://`, `rediss://` with TLS), several servers of
//! one replication group (`redis://a:6379,b:6379`), or Sentinels
//! (`redis+sentinel://s1:26379,s2:26379/mastername`). [`RedisUrl`] is one server;
//! [`super::locate::Locator`] is any of the three.

use super::tls::{self, TlsOptions};
use super::RedisError;

/// Where and how to connect to one server, from
/// `redis[s]://[user[:password]@]host[:port][/db][?tls parameters]`.
/// `Debug` and `Display` never show the password.
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
    /// TLS settings for `rediss://`; `None` is plain TCP.
    pub tls: Option<TlsOptions>,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        write!(f, "{scheme}://{}", self.addr())
    }
}

impl RedisUrl {
    /// Parses the URL of one server. A URL naming several servers or Sentinels is
    /// refused here (a source's `url` takes those: see [`super::locate::Locator`]).
    pub fn parse(url: &str) -> Result<RedisUrl, RedisError> {
        let parts = UrlParts::parse(url)?;
        if parts.sentinel {
            return Err(parts.bad(
                "a redis+sentinel:// url names Sentinels, not a server; here give the server itself",
            ));
        }
        if parts.hosts.len() > 1 {
            return Err(
                parts.bad("several hosts are only for a source's url; here give one server")
            );
        }
        Ok(parts.nodes().remove(0))
    }

    /// `host:port` (IPv6 addresses in brackets), for messages and connecting.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The same credentials and TLS settings for another server.
    pub fn with_host(&self, host: &str, port: u16) -> RedisUrl {
        RedisUrl {
            host: host.to_string(),
            port,
            ..self.clone()
        }
    }
}

/// The pieces of any Redis URL form, decoded and checked.
pub(super) struct UrlParts {
    /// `redis+sentinel://` or `rediss+sentinel://`.
    pub(super) sentinel: bool,
    /// TLS settings when the scheme has the extra `s`.
    pub(super) tls: Option<TlsOptions>,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    /// Every `host:port` of the authority, in order.
    pub(super) hosts: Vec<(String, u16)>,
    /// The path without its leading `/` (the master name of a Sentinel URL).
    pub(super) path: String,
    /// `sentinel_user` and `sentinel_password` (Sentinel URLs only).
    pub(super) sentinel_user: Option<String>,
    pub(super) sentinel_password: Option<String>,
    /// The URL with its secrets masked, for messages.
    masked: String,
}

/// The forms, for error messages.
const FORMS: &str = "use redis://[user:password@]host:port, rediss://...?ca=FILE for TLS, redis://host1:port1,host2:port2 to follow a primary among several servers, or redis+sentinel://host:port[,host:port]/mastername";

impl UrlParts {
    pub(super) fn parse(url: &str) -> Result<UrlParts, RedisError> {
        let masked = crate::config::redact_url(url);
        let bad = |reason: &str| RedisError::Url {
            url: masked.clone(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad(&format!("no scheme; {FORMS}")))?;
        let (sentinel, secure) = match scheme {
            "redis" => (false, false),
            "rediss" => (false, true),
            "redis+sentinel" => (true, false),
            "rediss+sentinel" => (true, true),
            _ => {
                return Err(bad(&format!(
                    "the scheme `{scheme}` is not a Redis scheme; {FORMS}"
                )))
            }
        };
        let rest = rest.split('#').next().unwrap_or("");
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.split_once('/') {
            Some((a, p)) => (a, p),
            None => (before_query, ""),
        };
        let (userinfo, hostlist) = match authority.rfind('@') {
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
        let default_port = if sentinel { 26379 } else { 6379 };
        let mut hosts = Vec::new();
        for hostport in hostlist.split(',') {
            hosts.push(host_port(hostport, default_port).map_err(|r| bad(&r))?);
        }
        let mut parts = UrlParts {
            sentinel,
            tls: secure.then(TlsOptions::default),
            user,
            password,
            hosts,
            path: percent_decode(path).map_err(|_| bad("bad %-escape in the path"))?,
            sentinel_user: None,
            sentinel_password: None,
            masked: masked.clone(),
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(k).map_err(|_| bad("bad %-escape in a parameter"))?;
            let value = percent_decode(v).map_err(|_| bad("bad %-escape in a parameter"))?;
            match name.as_str() {
                n if tls::PARAMS.contains(&n) => match parts.tls.as_mut() {
                    Some(t) => t.set(n, &value).map_err(|r| bad(&r))?,
                    None => {
                        return Err(bad(&format!(
                            "`{n}` is a TLS parameter, but the scheme is {scheme}://; use {}://",
                            scheme.replacen("redis", "rediss", 1)
                        )))
                    }
                },
                "sentinel_user" | "sentinel_password" if sentinel => {
                    if value.is_empty() {
                        return Err(bad(&format!("{name} is empty")));
                    }
                    if name == "sentinel_user" {
                        parts.sentinel_user = Some(value);
                    } else {
                        parts.sentinel_password = Some(value);
                    }
                }
                other => {
                    let known = if sentinel {
                        "ca, cert, key, verify (rediss+sentinel://), sentinel_user, sentinel_password"
                    } else {
                        "ca, cert, key, verify (rediss:// only)"
                    };
                    return Err(bad(&format!(
                        "unknown parameter `{other}` (known: {known})"
                    )));
                }
            }
        }
        if let Some(t) = &parts.tls {
            t.check().map_err(|r| bad(&r))?;
        }
        if sentinel && (parts.path.is_empty() || parts.path.contains('/')) {
            return Err(bad(
                "a redis+sentinel:// url ends with the name Sentinel monitors the primary under (`/mymaster`)",
            ));
        }
        Ok(parts)
    }

    /// The URL's error for `reason`.
    pub(super) fn bad(&self, reason: &str) -> RedisError {
        RedisError::Url {
            url: self.masked.clone(),
            reason: reason.to_string(),
        }
    }

    /// One [`RedisUrl`] per host, with the URL's credentials and TLS settings.
    pub(super) fn nodes(&self) -> Vec<RedisUrl> {
        self.hosts
            .iter()
            .map(|(host, port)| RedisUrl {
                host: host.clone(),
                port: *port,
                user: self.user.clone(),
                password: self.password.clone(),
                tls: self.tls.clone(),
            })
            .collect()
    }
}

/// `host[:port]` or `[v6]:port`.
fn host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || s.starts_with('[') => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                // Not echoed: in a malformed URL it may be part of a password.
                .ok_or_else(|| "the port must be a number from 1 to 65535".to_string())?,
        ),
        _ => (s, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("a host is missing".into());
    }
    Ok((host.to_string(), port))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server() {
        let u = RedisUrl::parse("redis://alice:p%40ss@db.local:6380/0").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.user.as_deref()),
            ("db.local", 6380, Some("alice"))
        );
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert!(u.tls.is_none());
        let u = RedisUrl::parse("redis://:secret@127.0.0.1").unwrap();
        assert_eq!((u.user.clone(), u.port), (None, 6379));
        assert!(!format!("{u:?} {u}").contains("secret"));
        assert!(RedisUrl::parse("redis://h:notaport").is_err());
        assert!(RedisUrl::parse("redis://h:0").is_err());
        let u = RedisUrl::parse("redis://[::1]:7000").unwrap();
        assert_eq!((u.host.as_str(), u.addr()), ("::1", "[::1]:7000".into()));
    }

    #[test]
    fn tls_parameters() {
        let u = RedisUrl::parse(
            "rediss://:pw@127.0.0.1:6380?ca=/etc/t/ca%20x.pem&cert=c.pem&key=k.pem&verify=ca",
        )
        .unwrap();
        let t = u.tls.clone().unwrap();
        assert_eq!(
            t.ca.as_deref(),
            Some(std::path::Path::new("/etc/t/ca x.pem"))
        );
        assert_eq!(t.verify, super::super::tls::Verify::Ca);
        assert_eq!(u.to_string(), "rediss://127.0.0.1:6380");
        let e = RedisUrl::parse("redis://h?ca=x").unwrap_err().to_string();
        assert!(e.contains("use rediss://"), "{e}");
        let e = RedisUrl::parse("rediss://h?cert=x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cert needs key"), "{e}");
        let e = RedisUrl::parse("rediss://:hunter2@h?cafile=x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown parameter `cafile`"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn several_hosts_and_sentinels_are_not_one_server() {
        let e = RedisUrl::parse("redis://a:1,b:2").unwrap_err().to_string();
        assert!(e.contains("one server"), "{e}");
        let e = RedisUrl::parse("redis+sentinel://s:26379/m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Sentinels"), "{e}");
        let p = UrlParts::parse(
            "rediss+sentinel://u:pw@s1,s2:5000/my%20primary?sentinel_password=sp&ca=ca.pem",
        )
        .unwrap();
        assert!(p.sentinel && p.tls.is_some());
        assert_eq!(
            p.hosts,
            vec![("s1".to_string(), 26379), ("s2".to_string(), 5000)]
        );
        assert_eq!(
            (p.path.as_str(), p.sentinel_password.as_deref()),
            ("my primary", Some("sp"))
        );
        assert!(UrlParts::parse("redis+sentinel://s1:26379").is_err());
        assert!(UrlParts::parse("redis://a:1?sentinel_password=x").is_err());
        assert!(UrlParts::parse("redis://a:1,,b:2").is_err());
    }
}
