//! `tidemark digest URL`: an order-independent digest of a live source, computed the
//! way a restore reports it, so a restore can be compared with its source. The URL's
//! scheme selects the kind.

use anyhow::{bail, Result};
use serde_json::json;

use crate::config::redact_url;
use crate::digest::kafka::digest_cluster;
use crate::kafka::Connection;

pub fn digest(url: &str, topics: &[String], as_json: bool) -> Result<()> {
    match url.split_once("://").map(|(s, _)| s) {
        Some("postgres" | "postgresql") => postgres(url, as_json),
        Some("redis" | "rediss") => redis(url, as_json),
        Some("kafka") => kafka(url, topics, as_json),
        _ => bail!(
            "cannot digest `{}`: unsupported URL scheme; use postgres://... or kafka://host:port",
            redact_url(url)
        ),
    }
}

fn postgres(url: &str, as_json: bool) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let digest = rt
        .block_on(crate::digest::postgres::digest_url(url))
        .map_err(anyhow::Error::msg)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&digest)?);
    } else {
        for p in &digest.parts {
            println!("{:<40} {:>12} rows  {}", p.name, p.rows, p.digest);
        }
        println!("overall {}", digest.overall);
    }
    Ok(())
}

fn redis(url: &str, as_json: bool) -> Result<()> {
    let d = crate::digest::redis::digest_url(url)?;
    if as_json {
        let dbs: serde_json::Map<String, serde_json::Value> = d
            .dbs
            .iter()
            .map(|(db, n)| (db.to_string(), json!(n)))
            .collect();
        let doc = json!({ "url": redact_url(url), "digest": d.digest, "keys": d.keys, "dbs": dbs });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{} keys {} {}", d.digest, d.keys, redact_url(url));
    }
    Ok(())
}

fn kafka(url: &str, topics: &[String], as_json: bool) -> Result<()> {
    let conn = Connection::from_url(url)?;
    let digests = digest_cluster(&conn, topics)?;
    if as_json {
        let parts: Vec<_> = digests
            .iter()
            .map(|((t, p), d)| json!({ "topic": t, "partition": p, "records": d.records(), "sha256": d.hex() }))
            .collect();
        let doc = json!({ "url": url, "kind": "kafka", "partitions": parts });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for ((t, p), d) in &digests {
            println!("{t}/{p} records={} sha256={}", d.records(), d.hex());
        }
    }
    Ok(())
}
