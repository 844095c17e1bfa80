//! Where the primary is: the one server of a URL, the primary among several
//! servers of one replication group (`redis://a:6379,b:6379`), or the one
//! Sentinel names (`redis+sentinel://s1:26379,s2:26379/mymaster`).
//!
//! Capture asks again at every reconnect, so after a failover it finds the
//! promoted replica and `PSYNC`s there with the journal's position: a promoted
//! replica serves its old primary's history from `replid2`, so capture goes on
//! with `+CONTINUE` and no new base image when the new primary holds everything
//! the journal does.
//!
//! What is trusted: Sentinel's answer, checked against the server's own `INFO
//! replication` (a server that says it is a replica is not followed). In an
//! address list, a server is the primary if it says so; when several say so
//! (a manual failover that left the old primary writable), the one that can
//! continue the journal's history is preferred, the successor (the journal's
//! replication id is its `replid2`) before the predecessor, then list order.

use std::sync::Mutex;

use serde_json::json;

use super::resp::{Conn, RedisUrl, Reply};
use super::url::UrlParts;
use super::RedisError;
use crate::capture::SourceJournal;
use crate::config::Timeouts;
use crate::time::Timestamp;

/// How to find the server to read from.
#[derive(Clone, Debug)]
pub enum Locator {
    /// One server (`redis://host:port`).
    One(RedisUrl),
    /// Several servers of one replication group; the primary among them.
    Group(Vec<RedisUrl>),
    /// The primary Sentinel names.
    Sentinel(Sentinels),
}

/// A `redis+sentinel://` URL: the Sentinels, the name they monitor the primary
/// under, and how to reach the data servers. `Debug` masks passwords.
#[derive(Clone, Debug)]
pub struct Sentinels {
    /// The Sentinels, asked in order (with `sentinel_user`/`sentinel_password`).
    pub sentinels: Vec<RedisUrl>,
    /// The monitored primary's name.
    pub master: String,
    /// Credentials and TLS settings for the data servers (its host is a placeholder).
    pub node: RedisUrl,
}

/// What a server says of its place in replication (`INFO replication`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Role {
    /// `role:master`.
    pub primary: bool,
    /// `master_replid`.
    pub replid: String,
    /// `master_replid2`: the history it continued, if it was promoted.
    pub replid2: String,
    /// `second_repl_offset`: the last offset + 1 of `replid2` it can serve (-1: none).
    pub second_offset: i64,
    /// `master_repl_offset`.
    pub offset: u64,
    /// For a replica: the primary it follows, `host:port`.
    pub follows: String,
}

impl Role {
    /// Asks `conn`; `None` when this user may not run `INFO`.
    pub fn of(conn: &mut Conn) -> Result<Option<Role>, RedisError> {
        let text = match conn.call(&["INFO", "replication"]) {
            Ok(r) => r.text().unwrap_or_default(),
            Err(RedisError::Server { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(Role::parse(&text)))
    }

    fn parse(text: &str) -> Role {
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                .unwrap_or_default()
        };
        Role {
            primary: field("role:") == "master",
            replid: field("master_replid:"),
            replid2: field("master_replid2:"),
            second_offset: field("second_repl_offset:").parse().unwrap_or(-1),
            offset: field("master_repl_offset:").parse().unwrap_or(0),
            follows: format!("{}:{}", field("master_host:"), field("master_port:")),
        }
    }

    /// Whether `PSYNC replid offset+1` can be served from this server's own
    /// history (`Own`), or from the one it continued when it was promoted
    /// (`Inherited`), as far as `INFO` tells (its backlog decides in the end).
    fn continues(&self, replid: &str, offset: u64) -> Option<Lineage> {
        if self.replid == replid && offset <= self.offset {
            Some(Lineage::Own)
        } else if self.replid2 == replid && (offset as i64) < self.second_offset {
            Some(Lineage::Inherited)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lineage {
    Own,
    Inherited,
}

/// A connection to the server found, authenticated, its read timeout `read`.
pub struct Found {
    /// The connection.
    pub conn: Conn,
    /// The server's URL.
    pub url: RedisUrl,
    /// How it was found, for the log and `status`.
    pub via: String,
}

impl Locator {
    /// Parses any Redis URL form (checks everything but files and servers).
    pub fn parse(url: &str) -> Result<Locator, RedisError> {
        let parts = UrlParts::parse(url)?;
        let mut nodes = parts.nodes();
        if parts.sentinel {
            let sentinels = nodes
                .iter()
                .map(|n| RedisUrl {
                    user: parts.sentinel_user.clone(),
                    password: parts.sentinel_password.clone(),
                    ..n.clone()
                })
                .collect();
            return Ok(Locator::Sentinel(Sentinels {
                sentinels,
                master: parts.path.clone(),
                node: nodes.remove(0),
            }));
        }
        Ok(match nodes.len() {
            1 => Locator::One(nodes.remove(0)),
            _ => Locator::Group(nodes),
        })
    }

    /// Every URL this locator may connect to (for checking TLS files).
    pub fn urls(&self) -> Vec<&RedisUrl> {
        match self {
            Locator::One(u) => vec![u],
            Locator::Group(v) => v.iter().collect(),
            Locator::Sentinel(s) => s.sentinels.iter().chain([&s.node]).collect(),
        }
    }

    /// What it points at, without secrets.
    pub fn describe(&self) -> String {
        let list = |v: &[RedisUrl]| v.iter().map(RedisUrl::addr).collect::<Vec<_>>().join(",");
        match self {
            Locator::One(u) => u.to_string(),
            Locator::Group(v) => format!("the servers {}", list(v)),
            Locator::Sentinel(s) => format!(
                "primary `{}` of the Sentinels {}",
                s.master,
                list(&s.sentinels)
            ),
        }
    }

    /// The server to read from (digest, identity, status): the URL's server as it
    /// is, whatever its role, or the primary of a group or Sentinel.
    pub fn connect(&self, timeouts: &Timeouts) -> Result<Conn, RedisError> {
        match self {
            Locator::One(u) => {
                let conn = Conn::connect(u, timeouts.connect)?;
                set_read_timeout(&conn, timeouts)?;
                Ok(conn)
            }
            _ => Ok(self.primary(timeouts, None)?.conn),
        }
    }

    /// Connects to the primary. `history` (the journal's replication id and
    /// offset) picks, among several servers claiming to be primary, the one that
    /// can continue it. The URL's one server must be a primary (a replica is a
    /// configuration error); for a group or Sentinel, finding none is transient
    /// (a failover under way).
    pub fn primary(
        &self,
        timeouts: &Timeouts,
        history: Option<(&str, u64)>,
    ) -> Result<Found, RedisError> {
        match self {
            Locator::One(u) => {
                let mut conn = Conn::connect(u, timeouts.connect)?;
                set_read_timeout(&conn, timeouts)?;
                // INFO not granted to this ACL user: PSYNC decides.
                if let Some(role) = Role::of(&mut conn)? {
                    if !role.primary {
                        return Err(RedisError::NotPrimary {
                            addr: conn.addr().to_string(),
                            primary: role.follows,
                        });
                    }
                }
                Ok(Found {
                    conn,
                    url: u.clone(),
                    via: "the url".into(),
                })
            }
            Locator::Group(urls) => group_primary(urls, timeouts, history),
            Locator::Sentinel(s) => s.primary(timeouts),
        }
    }
}

fn set_read_timeout(conn: &Conn, timeouts: &Timeouts) -> Result<(), RedisError> {
    conn.stream()
        .set_read_timeout(Some(timeouts.read))
        .map_err(|e| RedisError::io(conn.addr(), e))
}

/// The primary among `urls`.
fn group_primary(
    urls: &[RedisUrl],
    timeouts: &Timeouts,
    history: Option<(&str, u64)>,
) -> Result<Found, RedisError> {
    let mut tried = Vec::new();
    let mut permanent = None;
    let mut primaries: Vec<(Conn, &RedisUrl, Role)> = Vec::new();
    for url in urls {
        let attempt = Conn::connect(url, timeouts.connect).and_then(|mut conn| {
            set_read_timeout(&conn, timeouts)?;
            let role = Role::of(&mut conn)?;
            Ok((conn, role))
        });
        match attempt {
            Ok((conn, Some(role))) if role.primary => primaries.push((conn, url, role)),
            Ok((_, Some(role))) => {
                tried.push(format!("{}: a replica of {}", url.addr(), role.follows))
            }
            Ok((_, None)) => tried.push(format!(
                "{}: INFO is not granted to this user, so its role is unknown (grant +info)",
                url.addr()
            )),
            Err(e) if !e.is_transient() => {
                tried.push(format!("{}: {e}", url.addr()));
                permanent.get_or_insert(e);
            }
            Err(e) => tried.push(format!("{}: {e}", url.addr())),
        }
    }
    if primaries.is_empty() {
        return Err(permanent.unwrap_or_else(|| RedisError::NoPrimary {
            among: urls
                .iter()
                .map(RedisUrl::addr)
                .collect::<Vec<_>>()
                .join(","),
            tried: tried.join("; "),
        }));
    }
    let lineage = |r: &Role| history.and_then(|(id, off)| r.continues(id, off));
    let pick = primaries
        .iter()
        .position(|(_, _, r)| lineage(r) == Some(Lineage::Inherited))
        .or_else(|| {
            primaries
                .iter()
                .position(|(_, _, r)| lineage(r) == Some(Lineage::Own))
        })
        .unwrap_or(0);
    if primaries.len() > 1 {
        let names: Vec<String> = primaries.iter().map(|(_, u, _)| u.addr()).collect();
        tracing::warn!(primaries = %names.join(","), following = %primaries[pick].1.addr(),
            "several servers of the url say they are a primary (a failover that left the old primary writable?); following the one that continues the journal's history, else the first listed");
    }
    let (conn, url, _) = primaries.swap_remove(pick);
    Ok(Found {
        conn,
        url: url.clone(),
        via: "the url's address list".into(),
    })
}

impl Sentinels {
    /// Asks each Sentinel in turn for the primary's address and checks that the
    /// server there says it is a primary.
    fn primary(&self, timeouts: &Timeouts) -> Result<Found, RedisError> {
        let mut tried = Vec::new();
        let (mut unknown, mut answered) = (0, 0);
        let mut permanent = None;
        for s in &self.sentinels {
            let addr = match self.ask(s, timeouts) {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    answered += 1;
                    unknown += 1;
                    tried.push(format!(
                        "Sentinel {}: no primary named `{}`",
                        s.addr(),
                        self.master
                    ));
                    continue;
                }
                Err(e) => {
                    tried.push(format!("Sentinel {}: {e}", s.addr()));
                    if !e.is_transient() && permanent.is_none() {
                        permanent = Some(e);
                    }
                    continue;
                }
            };
            answered += 1;
            let url = self.node.with_host(&addr.0, addr.1);
            let attempt = Conn::connect(&url, timeouts.connect).and_then(|mut conn| {
                set_read_timeout(&conn, timeouts)?;
                let role = Role::of(&mut conn)?;
                Ok((conn, role))
            });
            match attempt {
                Ok((conn, role)) if role.as_ref().is_none_or(|r| r.primary) => {
                    return Ok(Found {
                        conn,
                        url,
                        via: format!("Sentinel {} (primary `{}`)", s.addr(), self.master),
                    })
                }
                Ok((_, _)) => tried.push(format!(
                    "Sentinel {} names {}, which says it is a replica (a failover under way?)",
                    s.addr(),
                    url.addr()
                )),
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => tried.push(format!("Sentinel {} names {}: {e}", s.addr(), url.addr())),
            }
        }
        if answered > 0 && unknown == answered {
            return Err(RedisError::UnknownMaster {
                master: self.master.clone(),
                sentinels: self
                    .sentinels
                    .iter()
                    .map(RedisUrl::addr)
                    .collect::<Vec<_>>()
                    .join(","),
            });
        }
        if let (Some(e), 0) = (permanent, answered) {
            // No Sentinel could be asked, for a reason retrying cannot fix.
            return Err(e);
        }
        Err(RedisError::NoPrimary {
            among: format!("the Sentinels' primary `{}`", self.master),
            tried: tried.join("; "),
        })
    }

    /// `SENTINEL get-master-addr-by-name`: `None` if the Sentinel does not know
    /// the name.
    fn ask(&self, s: &RedisUrl, timeouts: &Timeouts) -> Result<Option<(String, u16)>, RedisError> {
        let mut conn = Conn::connect(s, timeouts.connect)?;
        set_read_timeout(&conn, timeouts)?;
        let reply = conn.call(&["SENTINEL", "get-master-addr-by-name", &self.master])?;
        let Reply::Array(Some(items)) = reply else {
            return Ok(None);
        };
        let text: Vec<String> = items.iter().filter_map(Reply::text).collect();
        match text.as_slice() {
            [host, port] => match port.parse::<u16>() {
                Ok(p) => Ok(Some((host.clone(), p))),
                Err(_) => Err(RedisError::Protocol {
                    addr: s.addr(),
                    detail: format!("SENTINEL get-master-addr-by-name answered the port `{port}`"),
                }),
            },
            _ => Err(RedisError::Protocol {
                addr: s.addr(),
                detail: "SENTINEL get-master-addr-by-name did not answer [host, port]".into(),
            }),
        }
    }
}

/// Which primary a source follows, across its capture attempts (one per
/// reconnect), published to `status` as the source's health report.
#[derive(Debug, Default)]
pub struct Followed {
    state: Mutex<FollowState>,
}

#[derive(Debug, Default, Clone)]
struct FollowState {
    primary: Option<String>,
    last_change: Option<serde_json::Value>,
}

/// How `PSYNC` went on a (re)connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// `+CONTINUE`: the history goes on.
    Continue,
    /// `+FULLRESYNC` after the journal had a position: a new base image.
    Full,
    /// The first full sync of a fresh journal.
    First,
}

impl Followed {
    /// Records that capture streams from `primary` (found `via`) in history
    /// `replid` after `resync`; `changed` says whether the history's replication id
    /// changed. Returns the previously followed primary when it was another one.
    /// Publishes the state for `status`.
    pub fn arrived(
        &self,
        journal: &SourceJournal,
        primary: &str,
        via: &str,
        replid: &str,
        resync: Resync,
        changed: bool,
    ) -> Option<String> {
        let Ok(mut st) = self.state.lock() else {
            return None;
        };
        let previous = st.primary.replace(primary.to_string());
        let moved = previous
            .as_deref()
            .filter(|p| *p != primary)
            .map(str::to_string);
        if moved.is_some() || changed || resync == Resync::Full {
            st.last_change = Some(json!({
                "at": Timestamp::now().to_rfc3339(),
                "from": previous,
                "to": primary,
                "psync": match resync {
                    Resync::Continue => "continue",
                    Resync::Full | Resync::First => "full resync",
                },
                "new_base_image": resync != Resync::Continue,
                "replid": replid,
            }));
        }
        let report = json!({
            "redis": {
                "primary": primary,
                "found_via": via,
                "replid": replid,
                "last_change": st.last_change,
            }
        });
        if let Err(error) = journal.set_health(&report) {
            tracing::warn!(source = %journal.name(), %error, "cannot record which primary is followed");
        }
        moved
    }
}

/// The lines `status` prints from a Redis source's health report.
pub fn status_lines(health: &serde_json::Value) -> Vec<String> {
    let r = &health["redis"];
    let Some(primary) = r["primary"].as_str() else {
        return Vec::new();
    };
    let mut lines = vec![format!(
        "    following primary {primary} (found via {})",
        r["found_via"].as_str().unwrap_or("?")
    )];
    let c = &r["last_change"];
    if let Some(at) = c["at"].as_str() {
        let from = c["from"].as_str().unwrap_or("(start)");
        let how = if c["new_base_image"] == true {
            "PSYNC refused: full resync, new base image"
        } else {
            "PSYNC continued, no new base image"
        };
        lines.push(format!(
            "    last change of primary or history at {at}: {from} -> {}: {how} (replication id {})",
            c["to"].as_str().unwrap_or("?"),
            c["replid"].as_str().unwrap_or("?")
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert!(matches!(
            Locator::parse("redis://h:1").unwrap(),
            Locator::One(_)
        ));
        let Locator::Group(v) = Locator::parse("redis://:pw@a:1,b").unwrap() else {
            panic!("not a group");
        };
        assert_eq!(v[1].addr(), "b:6379");
        assert_eq!(v[1].password.as_deref(), Some("pw"));
        let l = Locator::parse("redis+sentinel://:pw@s1,s2:2/m?sentinel_password=sp").unwrap();
        let Locator::Sentinel(s) = &l else {
            panic!("not sentinel");
        };
        assert_eq!(s.master, "m");
        assert_eq!(s.sentinels[0].addr(), "s1:26379");
        assert_eq!(s.sentinels[0].password.as_deref(), Some("sp"));
        assert_eq!(s.node.password.as_deref(), Some("pw"));
        let d = format!("{} {l:?}", l.describe());
        assert!(!d.contains("pw") && !d.contains("sp"), "{d}");
    }

    #[test]
    fn lineage() {
        let promoted = Role::parse(
            "role:master\r\nmaster_replid:NEW\r\nmaster_replid2:OLD\r\nmaster_repl_offset:500\r\nsecond_repl_offset:401\r\n",
        );
        assert!(promoted.primary);
        assert_eq!(promoted.continues("OLD", 400), Some(Lineage::Inherited));
        // The journal holds more of OLD than the promoted replica got.
        assert_eq!(promoted.continues("OLD", 401), None);
        assert_eq!(promoted.continues("NEW", 450), Some(Lineage::Own));
        assert_eq!(promoted.continues("NEW", 501), None);
        let replica = Role::parse("role:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:6379\r\n");
        assert!(!replica.primary);
        assert_eq!(replica.follows, "10.0.0.1:6379");
    }

    #[test]
    fn status_lines_name_the_change() {
        let h = json!({"redis": {"primary": "b:2", "found_via": "the url's address list",
            "last_change": {"at": "T", "from": "a:1", "to": "b:2", "new_base_image": false, "replid": "x"}}});
        let l = status_lines(&h);
        assert!(l[0].contains("following primary b:2"), "{l:?}");
        assert!(
            l[1].contains("a:1 -> b:2") && l[1].contains("no new base image"),
            "{l:?}"
        );
        assert!(status_lines(&json!(null)).is_empty());
    }
}
