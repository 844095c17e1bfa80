//! `tidemark restore`: restore one source to a moment into a target.

use anyhow::{bail, Result};

use crate::config::{redact_url, Config, SourceKind};
use crate::restore::kafka::{self as kafka_restore, KafkaRestoreOptions};
use crate::restore::{self, RestoreError, RestorePlan};

/// Flags of `restore` besides the source, moment and target.
#[derive(Debug, Default)]
pub struct Flags {
    pub dry_run: bool,
    pub force: bool,
    pub topic_map: Option<String>,
}

pub fn restore(cfg: &Config, source: &str, at: &str, target: &str, flags: Flags) -> Result<()> {
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
    if flags.topic_map.is_some() && plan.source.kind != SourceKind::Kafka {
        bail!("--topic-map applies to Kafka sources only; remove it");
    }
    println!("{plan}");
    println!(
        "  into {}{}",
        redact_url(target),
        if flags.force {
            " (--force: even if it holds data)"
        } else {
            ""
        }
    );
    if plan.source.kind == SourceKind::Kafka {
        return kafka(&journal, &plan, target, &flags);
    }
    if flags.dry_run {
        println!("dry run: nothing was touched");
        return Ok(());
    }
    match plan.source.kind {
        SourceKind::Postgres => {
            let rt = tokio::runtime::Runtime::new()?;
            let (summary, digest) = rt.block_on(async {
                let summary =
                    crate::restore::postgres::restore(&journal, &plan, target, flags.force).await?;
                let digest = crate::digest::postgres::digest_url(target)
                    .await
                    .map_err(RestoreError::Target)?;
                Ok::<_, RestoreError>((summary, digest))
            })?;
            println!(
                "restored `{}` at {} into {}: {} tables and {} rows from the base image, {} transactions ({} changes) replayed, final LSN {}, {:.1} s",
                plan.source.name,
                plan.at,
                redact_url(target),
                summary.tables,
                summary.image_rows,
                summary.transactions,
                summary.changes,
                summary.final_lsn,
                summary.seconds
            );
            println!(
                "digest of the restored database: {} (compare: tidemark digest <source-url>)",
                digest.overall
            );
            Ok(())
        }
        SourceKind::Redis => {
            let s = restore::redis::restore(&journal, &plan, target, flags.force)?;
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

fn kafka(
    journal: &crate::journal::Journal,
    plan: &RestorePlan,
    target: &str,
    flags: &Flags,
) -> Result<()> {
    let topic_map = kafka_restore::parse_topic_map(flags.topic_map.as_deref().unwrap_or(""))?;
    let name = |t: &str| topic_map.get(t).cloned().unwrap_or_else(|| t.to_string());
    if flags.dry_run {
        let c = kafka_restore::cut(journal, plan, true)?;
        for (t, m) in &c.topics {
            let configs: Vec<String> = m
                .configs
                .iter()
                .filter(|e| kafka_restore::copies_config(e))
                .map(|e| format!("{}={}", e.name, e.value))
                .collect();
            println!(
                "  topic {t} -> {} ({} partitions; configs: {})",
                name(t),
                m.partitions,
                if configs.is_empty() {
                    "-".to_string()
                } else {
                    configs.join(", ")
                }
            );
        }
        for ((t, p), end) in &c.end {
            let n = c.records.get(&(t.clone(), *p)).copied().unwrap_or(0);
            println!("  {t}/{p}: {n} records below offset {end}");
        }
        for g in &c.groups {
            println!(
                "  group {}: {}/{} committed offset {}",
                g.group, g.topic, g.partition, g.offset
            );
        }
        println!("dry run: nothing was touched");
        return Ok(());
    }
    let opts = KafkaRestoreOptions {
        target: target.to_string(),
        topic_map,
        force: flags.force,
        progress: true,
    };
    let s = kafka_restore::restore(journal, plan, &opts)?;
    let secs = s.elapsed.as_secs_f64().max(1e-6);
    println!(
        "restored {} records into {} partitions in {:.2}s ({:.0} records/s)",
        s.records,
        s.digests.len(),
        secs,
        s.records as f64 / secs
    );
    for t in &s.created {
        println!("  created topic {t}");
    }
    for t in &s.reused {
        println!("  wrote into existing topic {t}");
    }
    for (g, t, p, from, to) in &s.groups {
        println!("  group {g}: {t}/{p} committed offset {to} (source offset {from})");
    }
    println!(
        "digest (compare with `tidemark digest {}`):",
        redact_url(target)
    );
    for ((t, p), d) in &s.digests {
        println!("{t}/{p} records={} sha256={}", d.records(), d.hex());
    }
    Ok(())
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
