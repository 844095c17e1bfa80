//! `tidemark prune`: apply the configured retention now; `tidemark resync`: end a
//! source's history with a break.

use anyhow::{bail, Result};

use crate::config::Config;
use crate::time::Timestamp;

pub fn prune(cfg: &Config, dry_run: bool) -> Result<()> {
    let Some(window) = cfg.retention()? else {
        bail!("no retention configured: set [journal] retention (e.g. \"7d\") to prune");
    };
    let journal = if dry_run {
        super::open_read_only(cfg)?
    } else {
        super::open_for_write(cfg)?
    };
    for r in journal.prune(Timestamp::now(), window, dry_run)? {
        let verb = if dry_run { "would drop" } else { "dropped" };
        match r.kept_image {
            Some(id) => println!(
                "{}: {verb} {} events and {} base images; oldest kept image #{id}",
                r.source, r.events_dropped, r.images_dropped
            ),
            None => println!(
                "{}: nothing to drop (no base image older than the window)",
                r.source
            ),
        }
    }
    Ok(())
}

/// Leaves the note that makes the source's next capture start a new history.
pub fn resync(cfg: &Config, source: &str) -> Result<()> {
    if let Some(members) = cfg.group(source) {
        for m in members {
            resync(cfg, m)?;
        }
        return Ok(());
    }
    let src = cfg.configured(source).map_err(anyhow::Error::msg)?;
    let supported = crate::connectors::for_kind(src.kind).is_some_and(|c| c.resyncs());
    if !supported {
        bail!(
            "source `{source}` is a {} source, which starts a new base image by itself when its history breaks: there is nothing to resync",
            src.kind
        );
    }
    let journal = super::open_for_write(cfg).map_err(|e| {
        e.context("cannot open the journal for writing (is `tidemark run` running? stop it first)")
    })?;
    let id = journal.source(source)?.id;
    journal.set_note(id, crate::journal::RESYNC_NOTE, "`tidemark resync` was run")?;
    println!(
        "{source}: at its next start, capture records a break in the history (restores before it stay exact, none crosses it), drops its old replication slot if there is one, and starts a new history from a new base image; restart `tidemark run`"
    );
    Ok(())
}
