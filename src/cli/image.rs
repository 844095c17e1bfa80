//! `tidemark image take SOURCE`: ask the running capture for a base image now;
//! `tidemark image list SOURCE`: the source's images.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::fmt_time;
use crate::capture::images;
use crate::config::Config;
use crate::journal::Journal;

/// How long `--wait` waits for the image to be sealed.
const WAIT_AT_MOST: Duration = Duration::from_secs(6 * 3600);

pub fn take(cfg: &Config, source: &str, wait: bool) -> Result<()> {
    let src = cfg.configured(source).map_err(anyhow::Error::msg)?;
    if !crate::connectors::for_kind(src.kind).is_some_and(|c| c.scheduled_images()) {
        bail!(
            "source `{source}` is a {} source: its capture takes no base images on demand (see README, \"Base images and retention\")",
            src.kind
        );
    }
    if !src.settings.scheduled_images() {
        bail!(
            "source `{source}` takes base images only through its own resynchronisations (a Redis Cluster source: each shard's full sync); nothing was requested"
        );
    }
    let path = &cfg.journal.path;
    let newest = |j: &Journal| -> Result<Option<u64>> {
        let id = j.source(source)?.id;
        Ok(j.images(id)?.last().map(|m| m.id))
    };
    let before = newest(&Journal::open_read_only(path)?)?;
    let request = images::request(path, source)?;
    println!(
        "{source}: base image requested ({}); the running `tidemark run` takes it within seconds, while capture goes on",
        request.display()
    );
    if !wait {
        return Ok(());
    }
    let started = Instant::now();
    while started.elapsed() < WAIT_AT_MOST {
        std::thread::sleep(Duration::from_millis(500));
        let journal = Journal::open_read_only(path)?;
        let id = journal.source(source)?.id;
        if let Some(m) = journal.images(id)?.into_iter().last() {
            if Some(m.id) != before {
                println!(
                    "{source}: base image #{} sealed: the source at {} (after sequence {}, {} bytes)",
                    m.id,
                    fmt_time(Some(m.time_us)),
                    m.after_seq,
                    m.bytes
                );
                return Ok(());
            }
        }
    }
    bail!("{source}: no base image was sealed within {WAIT_AT_MOST:?}; is `tidemark run` running? (`tidemark status`)")
}

pub fn list(cfg: &Config, source: &str) -> Result<()> {
    let journal = super::open_read_only(cfg)?;
    let id = journal.source(source)?.id;
    let all = journal.images(id)?;
    if all.is_empty() {
        println!("{source}: no base images");
    }
    for m in all {
        println!(
            "#{:<6} source time {}  sealed {}  after sequence {:<10} {} chunks, {} bytes, {}{}",
            m.id,
            fmt_time(Some(m.time_us)),
            if m.sealed_us > 0 {
                fmt_time(Some(m.sealed_us))
            } else {
                "-".into()
            },
            m.after_seq,
            m.chunks,
            m.bytes,
            m.format,
            if m.part.is_empty() {
                String::new()
            } else {
                format!(", part {}", m.part)
            }
        );
    }
    Ok(())
}
