//! `tidemark digest URL`: an order-independent digest of a live database.

use anyhow::{bail, Result};

use crate::config::redact_url;

pub fn digest(url: &str, as_json: bool) -> Result<()> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    let rt = tokio::runtime::Runtime::new()?;
    let digest = match scheme {
        "postgres" | "postgresql" => rt
            .block_on(crate::digest::postgres::digest_url(url))
            .map_err(anyhow::Error::msg)?,
        _ => bail!(
            "cannot digest `{}`: supported URLs are postgres://",
            redact_url(url)
        ),
    };
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
