//! `tidemark restore`: restore one source to a moment into a target.

use anyhow::{bail, Result};

use crate::config::{redact_url, Config, SourceKind};
use crate::restore::{self, RestoreError};

pub fn restore(
    cfg: &Config,
    source: &str,
    at: &str,
    target: &str,
    dry_run: bool,
    force: bool,
) -> Result<()> {
    let at = super::parse_time("at", at)?;
    if cfg.source(source).is_none() {
        let known: Vec<&str> = cfg.sources.iter().map(|s| s.name()).collect();
        bail!(
            "no source named `{source}` in the configuration (configured: {})",
            known.join(", ")
        );
    }
    let journal = super::open_read_only(cfg)?;
    let plan = restore::plan(&journal, source, at)?;
    check_target(plan.source.kind, target)?;
    println!("{plan}");
    println!(
        "  into {}{}",
        redact_url(target),
        if force {
            " (--force: even if it holds data)"
        } else {
            ""
        }
    );
    if dry_run {
        println!("dry run: nothing was touched");
        return Ok(());
    }
    match plan.source.kind {
        SourceKind::Redis => {
            let s = restore::redis::restore(&journal, &plan, target, force)?;
            let pos = s
                .final_position
                .as_ref()
                .map_or_else(|| "-".to_string(), |p| p.to_string());
            let secs = s.seconds.max(1e-6);
            println!(
                "restored {} keys and replayed {} commands up to {pos} in {:.2}s ({:.0} keys/s)",
                s.keys,
                s.commands,
                s.seconds,
                s.keys as f64 / secs
            );
            Ok(())
        }
        kind => Err(RestoreError::NotAvailable(kind).into()),
    }
}

/// The target must be a URL of the source's kind.
fn check_target(kind: SourceKind, target: &str) -> Result<()> {
    let schemes: &[&str] = match kind {
        SourceKind::Postgres => &["postgres", "postgresql"],
        SourceKind::Redis => &["redis", "rediss"],
        SourceKind::Kafka => &["kafka"],
        SourceKind::Mongodb => &["mongodb", "mongodb+srv"],
        SourceKind::Kubernetes => &["kubernetes", "kubeconfig"],
    };
    let scheme = target.split_once("://").map(|(s, _)| s);
    if scheme.is_some_and(|s| schemes.contains(&s)) {
        return Ok(());
    }
    bail!(
        "--target `{}` is not a {kind} URL; use {}://...",
        redact_url(target),
        schemes[0]
    )
}
