//! `tidemark digest URL`: an order-independent digest of a whole dataset.

use anyhow::{bail, Result};
use serde_json::json;

use crate::config::redact_url;
use crate::restore::redis::digest;

pub fn digest(url: &str, as_json: bool) -> Result<()> {
    match url.split_once("://").map(|(s, _)| s) {
        Some("redis" | "rediss") => {}
        _ => bail!(
            "cannot digest `{}`: only redis:// URLs are supported so far",
            redact_url(url)
        ),
    }
    let d = digest::digest_url(url)?;
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
