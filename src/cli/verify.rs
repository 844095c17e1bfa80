//! `tidemark verify`: scrub the journal and report every damaged record with what
//! it makes unrestorable; non-zero exit on any damage.

use anyhow::{bail, Result};

use crate::config::Config;

pub fn verify(cfg: &Config, as_json: bool) -> Result<()> {
    let journal = super::open_read_only(cfg)?;
    let started = std::time::Instant::now();
    let report = journal.scrub()?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "journal {}: read {} events, {} index entries, {} base images ({} chunks) in {:.1}s",
            journal.path().display(),
            report.events,
            report.index_entries,
            report.images,
            report.chunks,
            started.elapsed().as_secs_f64()
        );
        for d in &report.damage {
            println!(
                "DAMAGED {}{}\n    affects: {}",
                d.source
                    .as_ref()
                    .map(|s| format!("[{s}] "))
                    .unwrap_or_default(),
                d.record,
                d.affects
            );
        }
    }
    if !report.damage.is_empty() {
        bail!(
            "the journal has {} damaged record(s); restores named above cannot be trusted: restore the journal from a copy, or take new base images (`tidemark image take SOURCE`) so later moments no longer depend on the damage",
            report.damage.len()
        );
    }
    if !as_json {
        println!("no damage found");
    }
    Ok(())
}
