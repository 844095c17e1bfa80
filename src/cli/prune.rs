//! `tidemark prune`: apply the configured retention now.

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
