//! `tidemark digest URL`: an order-independent digest of a live source, computed the
//! way a restore reports it, so a restore can be compared with its source. The URL's
//! scheme selects the connector.

use anyhow::{bail, Result};
use serde_json::json;

use crate::config::{redact_url, Timeouts};
use crate::connectors::{self, KindOptions};

pub fn digest(url: &str, options: &KindOptions, timeouts: &Timeouts, as_json: bool) -> Result<()> {
    let Some(connector) = connectors::for_url(url) else {
        bail!(
            "cannot digest `{}`: unsupported URL scheme; use one of {}",
            redact_url(url),
            connectors::known_schemes()
        );
    };
    connectors::check_options(connector, options, connectors::OptionFor::Digest)
        .map_err(anyhow::Error::msg)?;
    let d = connector.digest(url, options, timeouts)?;
    if as_json {
        let mut doc = serde_json::to_value(&d)?;
        doc["url"] = json!(redact_url(url));
        doc["kind"] = json!(connector.kind().as_str());
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for l in d.part_lines() {
            println!("{l}");
        }
        println!("overall {}", d.overall);
    }
    Ok(())
}
