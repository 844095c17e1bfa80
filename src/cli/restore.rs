//! `tidemark restore`: restore one source to a moment into a target, through the
//! one restore driver ([`crate::restore::driver`]) whatever the kind.

use anyhow::{bail, Result};

use crate::config::{redact_url, Config};
use crate::connectors::KindOptions;
use crate::restore::driver::{self, NoProgress, Outcome, Request, TerminalProgress};
use crate::restore::{self, ProgressSink};
use crate::time::TimeSpec;

/// Flags of `restore` besides the source, moment and target.
#[derive(Debug, Default)]
pub struct Flags {
    pub dry_run: bool,
    pub force: bool,
    pub into_live_source: bool,
    pub json: bool,
    /// The connectors' own options (`--topic-map`).
    pub options: KindOptions,
}

pub fn restore(cfg: &Config, source: &str, at: &str, target: &str, flags: Flags) -> Result<()> {
    let at = super::parse_time("at", at)?;
    match cfg.group(source) {
        Some(members) => restore_group(cfg, source, members, at, target, &flags),
        None => restore_one(cfg, source, at, target, &flags),
    }
}

/// Restores every member of a section with members (PostgreSQL `databases`) at one
/// moment, each into `target` with `{database}` replaced by its database; `latest`
/// is the newest moment every member covers.
fn restore_group(
    cfg: &Config,
    group: &str,
    members: &[String],
    at: TimeSpec,
    target: &str,
    flags: &Flags,
) -> Result<()> {
    if !target.contains("{database}") {
        bail!(
            "`{group}` stands for {} sources ({}): restore one of them with --source {group}.<database>, or all of them with a target URL holding {{database}} where each one's name goes (e.g. postgres://host/{{database}}_restored)",
            members.len(),
            members.join(", ")
        );
    }
    // Only members the journal holds (databases = ["*"] also finds databases that
    // were never captured, such as earlier restores' targets).
    let journal = super::open_read_only(cfg)?;
    let members: Vec<String> = members
        .iter()
        .filter(|m| journal.source(m).is_ok())
        .cloned()
        .collect();
    drop(journal);
    if members.is_empty() {
        bail!("the journal holds none of `{group}`'s sources yet: nothing to restore");
    }
    let at = match at {
        TimeSpec::At(t) => t,
        TimeSpec::Latest => {
            let journal = super::open_read_only(cfg)?;
            let mut newest_common: Option<i64> = None;
            for m in &members {
                let covered = journal.source(m)?.stats.coverage_us.ok_or_else(|| {
                    anyhow::anyhow!("source `{m}` covers no moment yet: nothing to restore")
                })?;
                newest_common = Some(newest_common.map_or(covered, |c| c.min(covered)));
            }
            crate::time::Timestamp::from_micros(newest_common.unwrap_or(0))
        }
    };
    for m in &members {
        let db = m.strip_prefix(&format!("{group}.")).unwrap_or(m);
        restore_one(
            cfg,
            m,
            TimeSpec::At(at),
            &target.replace("{database}", db),
            flags,
        )?;
    }
    Ok(())
}

fn restore_one(
    cfg: &Config,
    source: &str,
    at: TimeSpec,
    target: &str,
    flags: &Flags,
) -> Result<()> {
    if cfg.source(source).is_none() {
        let known: Vec<&str> = cfg.sources.iter().map(|s| s.name()).collect();
        bail!(
            "no source named `{source}` in the configuration (configured: {})",
            known.join(", ")
        );
    }
    let journal = super::open_read_only(cfg)?;
    let plan = restore::plan(&journal, source, at)?;
    // Sources the journal captures (a discovered member that never ran, such as a
    // database made for this restore under `databases = ["*"]`, is not one yet).
    let captured: Vec<String> = journal.sources().into_iter().map(|s| s.name).collect();
    let live_sources = crate::app::restore::live_sources(cfg, plan.source.kind, &captured);
    if !flags.json {
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
    }
    let request = Request {
        journal: &journal,
        plan: &plan,
        target,
        options: &flags.options,
        force: flags.force,
        dry_run: flags.dry_run,
        into_live_source: flags.into_live_source,
        live_sources,
        timeouts: cfg.timeouts,
        settings: cfg.source(source).map(|s| s.settings.as_ref()),
        gate: None,
    };
    let mut terminal = TerminalProgress::default();
    let mut silent = NoProgress;
    let progress: &mut dyn ProgressSink = if flags.json {
        &mut silent
    } else {
        &mut terminal
    };
    let outcome = driver::restore(request, progress)?;
    drop(terminal);
    match outcome {
        Outcome::DryRun(lines) => {
            if flags.json {
                println!(
                    "{}",
                    serde_json::json!({ "dry_run": true, "plan": plan.to_string(), "preview": lines })
                );
            } else {
                for l in lines {
                    println!("{l}");
                }
                println!("dry run: nothing was touched");
            }
        }
        Outcome::Done(s) => {
            if flags.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            let counts = s
                .applied
                .counts
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ");
            let end = s
                .applied
                .final_position
                .as_ref()
                .map_or(String::new(), |p| format!(", final position {p}"));
            println!(
                "restored `{}` at {} into {} in {:.2}s: {counts}{end}",
                s.source, s.at, s.target, s.seconds
            );
            for n in &s.applied.notes {
                println!("  {n}");
            }
            for l in s.digest.part_lines() {
                println!("{l}");
            }
            println!(
                "digest of the restored database: {} (compare: tidemark digest <source-url>)",
                s.digest.overall
            );
        }
    }
    Ok(())
}
