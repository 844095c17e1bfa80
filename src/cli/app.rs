//! `tidemark point ...` and `tidemark restore --app`: recovery points and
//! whole-application restores ([`crate::app`]).

use anyhow::{anyhow, bail, Result};

use super::PointAction;
use crate::app::point::{self, CutAt};
use crate::app::restore::{AppAt, AppRestore};
use crate::config::{redact_url, Config};
use crate::time::{TimeSpec, Timestamp};

pub fn point(cfg: &Config, action: PointAction) -> Result<()> {
    match action {
        PointAction::Create {
            app,
            label,
            hook,
            wait,
            json,
        } => {
            let a = cfg.application(&app).map_err(|e| anyhow!(e))?;
            let wait = crate::time::parse_duration(&wait).map_err(|e| anyhow!("--wait: {e}"))?;
            let p = point::create(cfg, a, label.as_deref(), hook.as_deref(), wait)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                println!(
                    "recovery point {} of `{app}` at {}",
                    p.id,
                    Timestamp::from_micros(p.moment_us)
                );
                let cuts = point::cut(&CutAt::Point(p.clone()), &a.sources, &[]);
                print_cuts(&cuts);
            }
            Ok(())
        }
        PointAction::List { app, json } => {
            let a = cfg.application(&app).map_err(|e| anyhow!(e))?;
            let points = point::list(&cfg.journal.path, &a.name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&points)?);
                return Ok(());
            }
            if points.is_empty() {
                println!(
                    "application `{app}` has no recovery points yet (tidemark point create {app})"
                );
            }
            for p in &points {
                let worst = p
                    .sources
                    .values()
                    .map(|c| c.uncertainty_us)
                    .max()
                    .unwrap_or(0);
                println!(
                    "{}  {}  ±{:.1} ms{}",
                    p.id,
                    Timestamp::from_micros(p.moment_us),
                    worst as f64 / 1000.0,
                    p.label
                        .as_deref()
                        .map_or(String::new(), |l| format!("  label {l}"))
                );
            }
            Ok(())
        }
        PointAction::Show {
            app,
            point: name,
            at,
            json,
        } => {
            let a = cfg.application(&app).map_err(|e| anyhow!(e))?;
            let points = point::list(&cfg.journal.path, &a.name)?;
            let at = match (name, at) {
                (Some(n), _) => CutAt::Point(point::find(&cfg.journal.path, &a.name, &n)?),
                (None, Some(t)) => match super::parse_time("at", &t)? {
                    TimeSpec::At(t) => CutAt::Moment(t),
                    TimeSpec::Latest => {
                        bail!("--at latest: give a moment, or use restore --app --at latest")
                    }
                },
                (None, None) => bail!("give --point NAME or --at TIME"),
            };
            let cuts = point::cut(&at, &a.sources, &points);
            if json {
                println!("{}", serde_json::to_string_pretty(&cuts)?);
            } else {
                print_cuts(&cuts);
            }
            Ok(())
        }
    }
}

fn print_cuts(cuts: &[point::Cut]) {
    for c in cuts {
        let through = c.through_seq.map_or(String::new(), |s| {
            format!(" through sequence {s} (its marker)")
        });
        println!(
            "  {}: cut at {}{through}, offset {:+.1} ms, {}{}",
            c.source,
            c.at,
            c.offset_us as f64 / 1000.0,
            c.uncertainty_text(),
            c.measured_by
                .as_deref()
                .map_or(String::new(), |m| format!(" (measured by {m})"))
        );
    }
}

/// `--point NAME` (it wins) or `--at T`; `None` when neither was given.
fn app_at(at: Option<&str>, point: Option<&str>) -> Result<Option<AppAt>> {
    Ok(match (point, at) {
        (Some(p), _) => Some(AppAt::Point(p.to_string())),
        (None, Some(t)) => Some(AppAt::Moment(super::parse_time("at", t)?)),
        (None, None) => None,
    })
}

pub fn restore(
    cfg: &Config,
    app: &str,
    profile: &str,
    at: Option<&str>,
    point: Option<&str>,
    dry_run: bool,
    json: bool,
) -> Result<()> {
    let a = cfg.application(app).map_err(|e| anyhow!(e))?;
    let Some(at) = app_at(at, point)? else {
        bail!("give --at TIME or --point NAME");
    };
    let report = crate::app::restore::restore(AppRestore {
        cfg,
        app: a,
        profile,
        at,
        dry_run,
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} of application `{}` at {}{} with profile `{profile}`",
            if dry_run { "restore plan" } else { "restore" },
            report.application,
            report.moment,
            report
                .point
                .as_deref()
                .map_or(String::new(), |p| format!(" (point {p})"))
        );
        for s in &report.sources {
            let target = a.profiles[profile]
                .targets
                .get(&s.source)
                .map(|t| redact_url(&t.url))
                .unwrap_or_default();
            println!(
                "source `{}` ({}) into {target}: {}",
                s.source, s.kind, s.state
            );
            println!("  cut at {} {}", s.cut.at, s.cut.uncertainty_text());
            for l in s.plan.lines().skip(1) {
                println!("  {l}");
            }
            for l in &s.preview {
                println!("  {l}");
            }
            if let Some(sum) = &s.summary {
                println!(
                    "  restored in {:.2}s, digest {}",
                    sum.seconds, sum.digest.overall
                );
            }
            if let Some(e) = &s.error {
                println!("  {e}");
            }
        }
        if dry_run {
            println!("dry run: nothing was touched");
        } else {
            println!(
                "{} in {:.2}s (recovery time)",
                if report.ok {
                    "application restored"
                } else {
                    "application NOT fully restored"
                },
                report.seconds
            );
        }
    }
    if !report.ok {
        bail!("the restore of application `{app}` failed: see each source above for what its target holds");
    }
    Ok(())
}

/// A `--from`/`--to` value: a point of `app` (id or label), else a moment.
fn cut_at(cfg: &Config, app: Option<&str>, flag: &str, value: &str) -> Result<CutAt> {
    if let Some(a) = app {
        if let Ok(p) = point::find(&cfg.journal.path, a, value) {
            return Ok(CutAt::Point(p));
        }
    }
    match super::parse_time(flag, value)? {
        TimeSpec::At(t) => Ok(CutAt::Moment(t)),
        TimeSpec::Latest => Ok(CutAt::Moment(Timestamp::MAX)),
    }
}

pub fn diff(
    cfg: &Config,
    app: Option<&str>,
    source: Option<&str>,
    from: &str,
    to: &str,
    json: bool,
) -> Result<()> {
    let (sources, points) = match (app, source) {
        (Some(a), _) => {
            let a = cfg.application(a).map_err(|e| anyhow!(e))?;
            (a.sources.clone(), point::list(&cfg.journal.path, &a.name)?)
        }
        (None, Some(s)) => {
            cfg.configured(s).map_err(|e| anyhow!(e))?;
            (vec![s.to_string()], Vec::new())
        }
        (None, None) => bail!("give --app APP or --source SOURCE"),
    };
    let (a, b) = (cut_at(cfg, app, "from", from)?, cut_at(cfg, app, "to", to)?);
    let journal = super::open_read_only(cfg)?;
    let cuts_a = point::cut(&a, &sources, &points);
    let cuts_b = point::cut(&b, &sources, &points);
    let mut diffs = Vec::new();
    for (x, y) in cuts_a.into_iter().zip(cuts_b) {
        let key = seal_key(cfg, &x.source);
        diffs.push(crate::app::diff::diff_source(
            &journal,
            x,
            y,
            key.as_deref(),
        )?);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "sources": diffs }))?
        );
        return Ok(());
    }
    for d in &diffs {
        println!(
            "source `{}` ({}): {} events between {} and {}",
            d.source, d.kind, d.events, d.from.at, d.to.at
        );
        if d.changes.is_empty() {
            println!("  no changes");
        }
        for (g, c) in &d.changes {
            let actions: Vec<String> = c.actions.iter().map(|(a, n)| format!("{n} {a}")).collect();
            let moved = c
                .moved
                .as_ref()
                .map_or(String::new(), |(x, y)| format!("offset {x} -> {y}"));
            let keys = if c.keys > 0 {
                format!(" ({} keys)", c.keys)
            } else {
                String::new()
            };
            println!("  {g}: {}{moved}{keys}", actions.join(", "));
        }
        if let Some(k) = &d.kubernetes {
            print_kube(k);
        }
    }
    Ok(())
}

/// A Kubernetes source's key for its sealed Secrets, if it has one configured.
fn seal_key(cfg: &Config, source: &str) -> Option<std::sync::Arc<crate::crypto::SealKey>> {
    cfg.source(source)?
        .settings
        .as_any()
        .downcast_ref::<crate::connectors::kubernetes::config::KubeSettings>()?
        .key
        .clone()
}

fn print_kube(k: &crate::app::diff_kube::KubeDiff) {
    for o in &k.created {
        println!("  created {o}");
    }
    for (o, fields) in &k.changed {
        println!("  changed {o}: {}", fields.join(", "));
    }
    for o in &k.deleted {
        println!("  deleted {o}");
    }
    for h in &k.helm {
        let chart = match (&h.chart, &h.app_version) {
            (Some(c), Some(a)) => format!(", chart {c} app {a}"),
            _ => String::new(),
        };
        let status = match &h.was {
            Some(w) => format!("{w} -> {}", h.status),
            None => h.status.clone(),
        };
        println!(
            "  helm {} revision {} {} ({status}{chart})",
            h.release, h.revision, h.change
        );
    }
}

#[allow(clippy::too_many_arguments)]
pub fn history(
    cfg: &Config,
    source: &str,
    key: &str,
    within: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    scan: bool,
    json: bool,
) -> Result<()> {
    cfg.configured(source).map_err(|e| anyhow!(e))?;
    let journal = super::open_read_only(cfg)?;
    let info = journal.source(source)?;
    let seq = |flag: &str, v: Option<&str>, default: u64| -> Result<u64> {
        match v {
            None => Ok(default),
            Some(v) => match super::parse_time(flag, v)? {
                TimeSpec::Latest => Ok(u64::MAX),
                TimeSpec::At(t) => Ok(journal.seq_at_time(info.id, t)?.unwrap_or(0)),
            },
        }
    };
    let first = seq("from", from, 0)?.saturating_add(u64::from(from.is_some()));
    let last = seq("to", to, u64::MAX)?;
    let started = std::time::Instant::now();
    let (versions, found) =
        crate::app::history::search(&journal, source, key, within, first.max(1), last, !scan)?;
    let seconds = started.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::to_string_pretty(&versions)?);
        // stdout stays the list of versions (scripts read it); how they were found
        // goes to stderr, as one JSON object.
        let mut how = serde_json::to_value(found)?;
        how["versions"] = versions.len().into();
        how["seconds"] = seconds.into();
        eprintln!("{how}");
        return Ok(());
    }
    for v in &versions {
        println!(
            "{}  seq {}  {}{}  {} {}",
            v.time,
            v.seq,
            v.position,
            v.txn
                .as_deref()
                .map_or(String::new(), |t| format!("  txn {t}")),
            v.action,
            v.group
        );
        println!("  {}", v.payload);
    }
    let how = match (found.indexed_through, found.events_scanned) {
        (0, n) => format!("scanned {n} events"),
        (t, 0) => format!("key index through sequence {t}"),
        (t, n) => format!("key index through sequence {t}, then scanned {n} events"),
    };
    eprintln!(
        "{} versions of `{key}` in `{source}` in {seconds:.2}s ({how})",
        versions.len(),
    );
    Ok(())
}

pub fn rehearse(
    cfg: &Config,
    app: &str,
    profile: &str,
    at: Option<&str>,
    point: Option<&str>,
    keep: bool,
    json: bool,
) -> Result<()> {
    let a = cfg.application(app).map_err(|e| anyhow!(e))?;
    let at = app_at(at, point)?.unwrap_or(AppAt::Moment(TimeSpec::Latest));
    let r = crate::app::rehearse::rehearse(cfg, a, profile, at, keep)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "rehearsal {} of `{app}` at {} into profile `{profile}`: {} (recovery time {:.2}s)",
            r.id,
            r.at,
            if r.ok { "passed" } else { "FAILED" },
            r.rto_seconds
        );
        for s in &r.sources {
            println!(
                "  {}: {}{}{}",
                s.source,
                s.state,
                s.digest
                    .as_deref()
                    .map_or(String::new(), |d| format!(", digest {d}")),
                s.teardown
                    .as_deref()
                    .map_or(String::new(), |t| format!("; {t}"))
            );
            if let Some(e) = &s.error {
                println!("    {e}");
            }
        }
        for c in &r.checks {
            println!(
                "  check `{}`: {} ({})",
                c.command,
                if c.ok { "ok" } else { "FAILED" },
                c.status
            );
            if !c.ok {
                for l in c.output.lines() {
                    println!("    {l}");
                }
            }
        }
        if r.kept {
            println!("  --keep: the sandbox was left in place");
        }
    }
    if !r.ok {
        bail!("rehearsal of `{app}` failed (recorded as {})", r.id);
    }
    Ok(())
}

/// Events one step of the key indexer takes per source.
const INDEX_STEP: usize = 20_000;
/// How often the key indexer looks for new events once it has caught up.
const INDEX_IDLE: std::time::Duration = std::time::Duration::from_millis(500);
/// Test-only failpoint: set, `run` starts no key indexer (events are journaled and
/// acknowledged, never indexed), as a crash between append and index leaves them.
pub const INDEX_PAUSE_ENV: &str = "TIDEMARK_FAILPOINT_KEY_INDEX_PAUSE";

/// The background key indexer of `run` ([`crate::journal::CF_KEYS`]): follows
/// every source's events after they are durable, in steps that never hold the
/// journal's writer lock, at most half the time when behind; idles when caught
/// up; ends at shutdown. An error is
/// logged and retried (history scans what is not indexed meanwhile).
pub async fn index_keys(
    journal: std::sync::Arc<crate::journal::Journal>,
    mut stop: crate::capture::Shutdown,
) {
    if std::env::var_os(INDEX_PAUSE_ENV).is_some() {
        tracing::warn!("{INDEX_PAUSE_ENV} is set: the key index is not maintained");
        return;
    }
    loop {
        let j = std::sync::Arc::clone(&journal);
        let started = std::time::Instant::now();
        let step = tokio::task::spawn_blocking(move || {
            let mut caught_up = true;
            for s in j.sources() {
                caught_up &= j.index_keys(s.id, INDEX_STEP)?.caught_up;
            }
            Ok::<_, crate::journal::JournalError>(caught_up)
        })
        .await;
        let pause = match step {
            // Behind: as long a pause as the step took, so that catching up takes at
            // most half a core from the capture.
            Ok(Ok(false)) => started.elapsed(),
            Ok(Ok(true)) => INDEX_IDLE,
            Ok(Err(error)) => {
                tracing::error!(%error, "key index step failed; history scans what is not indexed");
                INDEX_IDLE * 10
            }
            Err(error) => {
                tracing::error!(%error, "key index task failed");
                INDEX_IDLE * 10
            }
        };
        if stop.is_fired() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait() => return,
        }
    }
}
