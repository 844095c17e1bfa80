//! What one event changed, as `diff` and `history` show it: the thing it belongs
//! to (a table, a Redis database and type, a partition, a collection, a kind of
//! Kubernetes object), what it did there, and the key it did it to. One arm per
//! payload kind of the on-disk tag table, like the `log` view.

use super::{ChangeEvent, Payload, PgChange, PgOp, PgValueKind};
use crate::position::PositionKind;

/// One thing an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touch {
    /// Where: `table public.orders`, `db 0 hash`, `partition orders/1`,
    /// `collection shop.carts`, `Deployment`, `group g orders/0`.
    pub group: String,
    /// What: `insert`, `update`, `delete`, `truncate`, `ddl`, `written`,
    /// `deleted`, `record`, `created`, `changed`, `offset`, ...
    pub action: &'static str,
    /// To what: a primary key (`42`, composite `7,a`), a Redis key, a record key,
    /// a document `_id`, `namespace/name`; `None` where there is no key.
    pub key: Option<String>,
    /// A value worth showing (a group's committed offset).
    pub detail: Option<String>,
}

fn touch(group: String, action: &'static str, key: Option<String>) -> Touch {
    Touch {
        group,
        action,
        key,
        detail: None,
    }
}

impl ChangeEvent {
    /// What this event changed (several things for a multi-key command).
    pub fn touches(&self) -> Vec<Touch> {
        match &self.payload {
            Some(Payload::Postgres(c)) => vec![postgres(c)],
            Some(Payload::Redis(c)) => redis(c.db, &c.args),
            Some(Payload::Kafka(r)) => {
                let group = match self.position.as_ref().and_then(|p| p.kind.as_ref()) {
                    Some(PositionKind::Kafka(p)) => {
                        format!("partition {}/{}", p.topic, p.partition)
                    }
                    _ => "partition ?".into(),
                };
                let key = r
                    .key
                    .as_deref()
                    .map(|k| String::from_utf8_lossy(k).into_owned());
                vec![touch(group, "record", key)]
            }
            Some(Payload::KafkaState(s)) => s
                .group_offsets
                .iter()
                .map(|g| Touch {
                    group: format!("group {} {}/{}", g.group, g.topic, g.partition),
                    action: "offset",
                    key: None,
                    detail: Some(g.offset.to_string()),
                })
                .collect(),
            Some(Payload::Mongo(m)) => vec![touch(
                format!("collection {}.{}", m.db, m.collection),
                mongo_action(&m.operation_type),
                mongo_id(&m.event_bson),
            )],
            Some(Payload::Kubernetes(k)) => {
                let action = match k.event_type.as_str() {
                    "ADDED" => "created",
                    "DELETED" => "deleted",
                    _ => "changed",
                };
                let key = if k.namespace.is_empty() {
                    k.name.clone()
                } else {
                    format!("{}/{}", k.namespace, k.name)
                };
                vec![touch(k.kind.clone(), action, Some(key))]
            }
            Some(Payload::Marker(m)) => {
                vec![touch(
                    "recovery points".into(),
                    "marker",
                    Some(m.name.clone()),
                )]
            }
            Some(Payload::RedisSlotMap(_)) | None => Vec::new(),
        }
    }
}

fn postgres(c: &PgChange) -> Touch {
    let table = format!("table {}.{}", c.schema, c.table);
    let op = PgOp::try_from(c.op).unwrap_or(PgOp::Unspecified);
    let (action, tuple) = match op {
        PgOp::Insert => ("insert", &c.new_tuple),
        PgOp::Update => ("update", &c.new_tuple),
        PgOp::Delete => ("delete", &c.old_tuple),
        PgOp::Truncate => return touch(table_list(&c.truncated), "truncate", None),
        PgOp::Ddl => return touch("schema".into(), "ddl", Some(c.ddl.clone())),
        PgOp::Sequence => return touch("sequences".into(), "sampled", None),
        PgOp::Unspecified => return touch(table, "?", None),
    };
    if c.key.is_empty() {
        return touch(table, action, None);
    }
    // Old tuples (key or full) are as wide as the columns, like new ones.
    let parts: Vec<String> = c
        .key
        .iter()
        .map(|&i| match tuple.get(i as usize) {
            Some(v) if v.kind == PgValueKind::Null as i32 => "NULL".into(),
            Some(v) => String::from_utf8_lossy(&v.data).into_owned(),
            None => "?".into(),
        })
        .collect();
    touch(table, action, Some(parts.join(",")))
}

fn table_list(names: &[String]) -> String {
    format!("table {}", names.join(", ").replace('"', ""))
}

/// The data type a Redis command writes, from its name.
fn redis_type(cmd: &str) -> &'static str {
    const TYPES: &[(&str, &[&str])] = &[
        (
            "string",
            &[
                "set",
                "setex",
                "psetex",
                "setnx",
                "append",
                "incr",
                "incrby",
                "decr",
                "decrby",
                "incrbyfloat",
                "getset",
                "setrange",
                "getex",
                "mset",
                "msetnx",
                "setbit",
                "bitop",
                "bitfield",
            ],
        ),
        (
            "hash",
            &[
                "hset",
                "hsetnx",
                "hmset",
                "hdel",
                "hincrby",
                "hincrbyfloat",
                "hexpire",
                "hpexpire",
                "hpersist",
            ],
        ),
        (
            "list",
            &[
                "lpush",
                "rpush",
                "lpushx",
                "rpushx",
                "lpop",
                "rpop",
                "lset",
                "lrem",
                "ltrim",
                "linsert",
                "lmove",
                "rpoplpush",
                "blmove",
                "brpoplpush",
                "lmpop",
            ],
        ),
        (
            "set",
            &[
                "sadd",
                "srem",
                "spop",
                "smove",
                "sinterstore",
                "sunionstore",
                "sdiffstore",
            ],
        ),
        (
            "zset",
            &[
                "zadd",
                "zrem",
                "zincrby",
                "zpopmin",
                "zpopmax",
                "zremrangebyscore",
                "zremrangebyrank",
                "zremrangebylex",
                "zunionstore",
                "zinterstore",
                "zdiffstore",
                "zrangestore",
                "zmpop",
            ],
        ),
        (
            "stream",
            &[
                "xadd",
                "xdel",
                "xtrim",
                "xgroup",
                "xack",
                "xclaim",
                "xautoclaim",
                "xsetid",
            ],
        ),
        (
            "expiry",
            &["expire", "pexpire", "expireat", "pexpireat", "persist"],
        ),
    ];
    TYPES
        .iter()
        .find(|(_, cmds)| cmds.contains(&cmd))
        .map_or("other", |(t, _)| t)
}

fn redis(db: u32, args: &[Vec<u8>]) -> Vec<Touch> {
    let Some(name) = args.first() else {
        return Vec::new();
    };
    let cmd = String::from_utf8_lossy(name).to_ascii_lowercase();
    let key = |i: usize| args.get(i).map(|k| String::from_utf8_lossy(k).into_owned());
    let at = |ty: &str| format!("db {db} {ty}");
    match cmd.as_str() {
        "select" | "ping" | "multi" | "exec" | "replconf" | "publish" => Vec::new(),
        "del" | "unlink" => (1..args.len())
            .map(|i| touch(at("key"), "deleted", key(i)))
            .collect(),
        "getdel" => vec![touch(at("string"), "deleted", key(1))],
        "flushdb" | "flushall" => vec![touch(format!("db {db}"), "flushed", None)],
        "rename" | "renamenx" => vec![
            touch(at("key"), "deleted", key(1)),
            touch(at("key"), "written", key(2)),
        ],
        "copy" => vec![touch(at("key"), "written", key(2))],
        "mset" | "msetnx" => (1..args.len())
            .step_by(2)
            .map(|i| touch(at("string"), "written", key(i)))
            .collect(),
        "restore" => vec![touch(at("key"), "written", key(1))],
        other => vec![touch(at(redis_type(other)), "written", key(1))],
    }
}

fn mongo_action(op: &str) -> &'static str {
    match op {
        "insert" => "insert",
        "update" => "update",
        "replace" => "replace",
        "delete" => "delete",
        "drop" => "drop",
        "rename" => "rename",
        "dropDatabase" => "dropDatabase",
        "create" | "createIndexes" | "dropIndexes" | "modify" => "ddl",
        _ => "other",
    }
}

/// The event's `documentKey._id`, strings unquoted, other values as MongoDB
/// extended JSON would show them.
fn mongo_id(bson: &[u8]) -> Option<String> {
    let doc = mongodb::bson::Document::from_reader(bson).ok()?;
    let id = doc.get_document("documentKey").ok()?.get("_id")?;
    Some(match id {
        mongodb::bson::Bson::String(s) => s.clone(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::PgValue;

    fn text(s: &str) -> PgValue {
        PgValue {
            kind: PgValueKind::Text as i32,
            data: s.as_bytes().to_vec(),
        }
    }

    #[test]
    fn keys_of_rows_commands_and_objects() {
        let row = PgChange {
            op: PgOp::Update as i32,
            schema: "public".into(),
            table: "t".into(),
            columns: vec!["a".into(), "b".into(), "c".into()],
            new_tuple: vec![text("1"), text("x"), text("7")],
            key: vec![0, 2],
            ..Default::default()
        };
        assert_eq!(postgres(&row).key.as_deref(), Some("1,7"));
        let del = PgChange {
            op: PgOp::Delete as i32,
            old_tuple: vec![text("1"), PgValue::default(), text("7")],
            ..row.clone()
        };
        let t = postgres(&del);
        assert_eq!((t.action, t.key.as_deref()), ("delete", Some("1,7")));
        let args = |a: &[&str]| a.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        let t = redis(2, &args(&["HSET", "h", "f", "v"]));
        assert_eq!(
            (t[0].group.as_str(), t[0].key.as_deref()),
            ("db 2 hash", Some("h"))
        );
        assert_eq!(redis(0, &args(&["DEL", "a", "b"])).len(), 2);
        assert_eq!(
            redis(0, &args(&["MSET", "a", "1", "b", "2"]))[1]
                .key
                .as_deref(),
            Some("b")
        );
        assert!(redis(0, &args(&["PUBLISH", "c", "m"])).is_empty());
    }
}
