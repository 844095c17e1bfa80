//! Sending commands to the node that owns their slot: which arguments are keys
//! (the target's own command table), one pipelined connection per primary, and a
//! [`CommandSink`] that routes each command by the slot of its keys.

use std::collections::HashMap;

use super::topology::{key_slot, ClusterUrl, SlotMap};
use crate::config::Timeouts;
use crate::connectors::redis::resp::{self, Conn, Reply};
use crate::connectors::redis::restore::commands::CommandSink;
use crate::connectors::redis::RedisError;

/// Commands buffered per node before they are sent and their replies read.
const BATCH: usize = 1000;
/// Bytes buffered per node before a flush.
const BATCH_BYTES: usize = 1 << 20;

/// Where a command's keys are, from the target's `COMMAND` table.
#[derive(Debug, Clone, Copy)]
enum KeySpec {
    /// No keys.
    None,
    /// `first`, `last` (negative: from the end), `step`, as `COMMAND` reports them.
    Fixed(i64, i64, i64),
    /// Keys depend on the arguments (`movablekeys`, or a container such as `XGROUP`):
    /// ask the server (`COMMAND GETKEYS`).
    Ask,
}

/// The keys of commands, as the target server defines them.
pub struct Keys {
    specs: HashMap<Vec<u8>, KeySpec>,
    conn: Conn,
}

impl Keys {
    /// Reads the command table of the node behind `conn` (kept for `GETKEYS`).
    pub fn new(mut conn: Conn) -> Result<Keys, RedisError> {
        let mut specs = HashMap::new();
        for c in conn.call(&["COMMAND"])?.into_array() {
            let v = c.into_array();
            let name = v
                .first()
                .and_then(Reply::text)
                .unwrap_or_default()
                .to_ascii_lowercase();
            let int = |i: usize| match v.get(i) {
                Some(Reply::Int(n)) => *n,
                _ => 0,
            };
            let flags: Vec<String> = v
                .get(2)
                .cloned()
                .map(Reply::into_array)
                .unwrap_or_default()
                .iter()
                .filter_map(Reply::text)
                .collect();
            let has_subcommands = v
                .get(9)
                .is_some_and(|s| matches!(s, Reply::Array(Some(a)) if !a.is_empty()));
            let spec = if flags.iter().any(|f| f == "movablekeys") || has_subcommands {
                KeySpec::Ask
            } else if int(3) == 0 {
                KeySpec::None
            } else {
                KeySpec::Fixed(int(3), int(4), int(5).max(1))
            };
            specs.insert(name.into_bytes(), spec);
        }
        Ok(Keys { specs, conn })
    }

    /// The keys of `args` (empty for a keyless command).
    pub fn of<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Vec<Vec<u8>>, RedisError> {
        let Some(name) = args.first() else {
            return Ok(Vec::new());
        };
        let spec = self
            .specs
            .get(&name.as_ref().to_ascii_lowercase())
            .copied()
            .unwrap_or(KeySpec::Ask);
        match spec {
            KeySpec::None => Ok(Vec::new()),
            KeySpec::Fixed(first, last, step) => {
                let n = args.len() as i64;
                let last = if last < 0 { n + last } else { last.min(n - 1) };
                let mut out = Vec::new();
                let mut i = first;
                while i <= last && i < n {
                    out.push(args[i as usize].as_ref().to_vec());
                    i += step;
                }
                Ok(out)
            }
            KeySpec::Ask => {
                let mut req: Vec<&[u8]> = vec![b"COMMAND", b"GETKEYS"];
                req.extend(args.iter().map(AsRef::as_ref));
                match self.conn.request(&req)? {
                    Reply::Array(keys) => Ok(keys
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(Reply::into_bytes)
                        .collect()),
                    // "The command has no key arguments" / "Invalid arguments".
                    Reply::Error(_) => Ok(Vec::new()),
                    other => Err(RedisError::Protocol {
                        addr: self.conn.addr().to_string(),
                        detail: format!("COMMAND GETKEYS answered {other:?}"),
                    }),
                }
            }
        }
    }
}

/// One primary's connection: commands are buffered and sent in batches, each
/// batch's replies read before the next is sent; the first errors are kept.
pub struct NodePipeline {
    conn: Conn,
    buf: Vec<u8>,
    queued: usize,
    /// Commands written in all.
    pub sent: u64,
    errors: Vec<String>,
}

impl NodePipeline {
    fn new(conn: Conn) -> NodePipeline {
        NodePipeline {
            conn,
            buf: Vec::with_capacity(BATCH_BYTES + (64 << 10)),
            queued: 0,
            sent: 0,
            errors: Vec::new(),
        }
    }

    fn push<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), RedisError> {
        resp::encode_command(args, &mut self.buf);
        self.queued += 1;
        self.sent += 1;
        if self.queued >= BATCH || self.buf.len() >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends what is buffered and reads every reply.
    pub fn flush(&mut self) -> Result<(), RedisError> {
        if self.queued == 0 {
            return Ok(());
        }
        self.conn.send_raw(&self.buf)?;
        self.buf.clear();
        for _ in 0..self.queued {
            if let Reply::Error(e) = self.conn.read_reply()? {
                if self.errors.len() < 5 {
                    self.errors.push(format!("{}: {e}", self.conn.addr()));
                }
            }
        }
        self.queued = 0;
        Ok(())
    }
}

/// Routes commands by slot to the target's primaries.
pub struct Router {
    nodes: Vec<NodePipeline>,
    /// Slot → index into `nodes`.
    owner: Vec<usize>,
    /// The target's key definitions.
    pub keys: Keys,
    /// Commands that had keys of several slots (refused, counted).
    addrs: Vec<String>,
}

impl Router {
    /// Connects to every primary of `map` (which must serve every slot).
    pub fn connect(
        url: &ClusterUrl,
        map: &SlotMap,
        timeouts: &Timeouts,
    ) -> Result<Router, RedisError> {
        let owners = map.owners();
        if let Some(free) = owners.iter().position(Option::is_none) {
            return Err(RedisError::ClusterMismatch {
                detail: format!(
                    "the target cluster serves only {} of 16384 slots (slot {free} has no primary); fix the cluster (redis-cli --cluster fix) before restoring into it",
                    16384 - map.unserved()
                ),
            });
        }
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        for s in &map.shards {
            let c = Conn::connect(&url.node(&s.host, s.port), timeouts.connect)?;
            c.stream()
                .set_read_timeout(None)
                .map_err(|e| RedisError::io(c.addr(), e))?;
            nodes.push(NodePipeline::new(c));
            addrs.push(s.addr());
        }
        let s0 = &map.shards[0];
        let keys = Keys::new(Conn::connect(
            &url.node(&s0.host, s0.port),
            timeouts.connect,
        )?)?;
        Ok(Router {
            nodes,
            owner: owners.into_iter().map(|o| o.unwrap_or(0)).collect(),
            keys,
            addrs,
        })
    }

    /// Index of the node owning the slot of `keys` (all in one slot), or an error
    /// naming the command.
    pub fn node_of<A: AsRef<[u8]>>(
        &self,
        keys: &[Vec<u8>],
        args: &[A],
    ) -> Result<Option<usize>, RedisError> {
        let mut slots = keys.iter().map(|k| key_slot(k));
        let Some(first) = slots.next() else {
            return Ok(None);
        };
        if slots.any(|s| s != first) {
            return Err(RedisError::ClusterMismatch {
                detail: format!(
                    "command {} has keys in several slots, which no cluster node can run",
                    args.first()
                        .map(|a| String::from_utf8_lossy(a.as_ref()).to_uppercase())
                        .unwrap_or_default()
                ),
            });
        }
        Ok(Some(self.owner[usize::from(first)]))
    }

    /// Sends `args` to node `i`.
    pub fn send_to<A: AsRef<[u8]>>(&mut self, i: usize, args: &[A]) -> Result<(), RedisError> {
        self.nodes[i].push(args)
    }

    /// Sends `args` to every primary.
    pub fn broadcast<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), RedisError> {
        for n in &mut self.nodes {
            n.push(args)?;
        }
        Ok(())
    }

    /// Number of primaries.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The node owning `slot`.
    pub fn owner(&self, slot: u16) -> usize {
        self.owner[usize::from(slot)]
    }

    /// `host:port` of node `i`.
    pub fn addr(&self, i: usize) -> &str {
        &self.addrs[i]
    }

    /// Flushes every node, waits for all replies; fails with the first errors.
    pub fn finish(&mut self) -> Result<u64, RedisError> {
        let mut errors = Vec::new();
        let mut sent = 0;
        for n in &mut self.nodes {
            n.flush()?;
            errors.append(&mut n.errors);
            sent += n.sent;
        }
        if !errors.is_empty() {
            return Err(RedisError::ClusterMismatch {
                detail: format!("the target refused commands ({}); the target is partly restored: fix the cause and restore again with --force", errors.join("; ")),
            });
        }
        Ok(sent)
    }

    /// A request on node `i`'s connection after everything queued there (flushed
    /// first), with its reply.
    pub fn request<A: AsRef<[u8]>>(&mut self, i: usize, args: &[A]) -> Result<Reply, RedisError> {
        self.nodes[i].flush()?;
        self.nodes[i].conn.request(args)
    }
}

impl CommandSink for Router {
    fn send<A: AsRef<[u8]>>(&mut self, db: u32, args: &[A]) -> Result<(), RedisError> {
        if db != 0 {
            return Err(RedisError::ClusterMismatch {
                detail: format!("the source has keys in database {db}; a cluster has database 0 only: restore into a single server instead"),
            });
        }
        let keys = self.keys.of(args)?;
        match self.node_of(&keys, args)? {
            Some(i) => self.send_to(i, args),
            None => self.broadcast(args),
        }
    }

    fn send_global<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), RedisError> {
        self.broadcast(args)
    }
}
