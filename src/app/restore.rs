//! `restore --app`: every source of an application restored to one cut.
//!
//! The order: plan every source (from the journal alone; any source that cannot
//! be restored to its cut fails the whole restore before anything is touched),
//! then restore every source in parallel (one thread and one read-only journal
//! handle each, through the same [`driver`] a single-source restore uses). The
//! Kubernetes sources restore *held* ([`crate::restore::Target::hold`]: every
//! workload at zero replicas) and wait at a [`Gate`] that opens only once every
//! data source restored and proved its digest; then their workloads are scaled
//! to their replica count at the cut, so the application's definition never
//! runs on data that is not all there.
//!
//! The first failure stops the rest: the other data restores stop at their next
//! progress report and the gate stays shut. The report says per source what its
//! target holds: `restored` (with digest), `failed` or `stopped` part-way (with
//! what a re-run does), or `held` (restored, workloads at zero replicas).

use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use super::point::{self, Cut, CutAt};
use crate::config::{Application, Config, SourceKind};
use crate::journal::Journal;
use crate::restore::driver::{self, Gate, NoProgress, Outcome, Request, RestoreSummary};
use crate::restore::{self, ProgressSink, RestoreError, RestorePlan};
use crate::time::{TimeSpec, Timestamp};

/// What to restore.
pub struct AppRestore<'a> {
    /// The configuration.
    pub cfg: &'a Config,
    /// The application.
    pub app: &'a Application,
    /// The profile's name in the application.
    pub profile: &'a str,
    /// The cut: a moment (`latest` = newest every source covers) or a point.
    pub at: AppAt,
    /// Plan only.
    pub dry_run: bool,
}

/// `--at T`, `--at latest` or `--point NAME`.
pub enum AppAt {
    /// A moment of tidemark's clock.
    Moment(TimeSpec),
    /// A stored point (id or label).
    Point(String),
}

/// One source of a whole-application restore.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    /// The source.
    pub source: String,
    /// Its kind.
    pub kind: SourceKind,
    /// Its cut.
    pub cut: Cut,
    /// The plan, as `restore --dry-run` prints it.
    pub plan: String,
    /// `restored`, `failed`, `stopped` (part-way), `held` (Kubernetes: restored with
    /// its workloads at zero replicas) or `planned`.
    pub state: &'static str,
    /// The restore's own summary (digest, counts, seconds), when it ran.
    pub summary: Option<RestoreSummary>,
    /// Why it failed, or why it did not start.
    pub error: Option<String>,
    /// `--dry-run`: the target's preview lines.
    pub preview: Vec<String>,
}

/// What `restore --app` did.
#[derive(Debug, Clone, Serialize)]
pub struct AppReport {
    /// The application.
    pub application: String,
    /// The profile.
    pub profile: String,
    /// The instant restored to (tidemark's clock).
    pub moment: Timestamp,
    /// The point, when restoring one.
    pub point: Option<String>,
    /// Per source, in the application's order.
    pub sources: Vec<SourceReport>,
    /// Wall time of the whole restore: the recovery time.
    pub seconds: f64,
    /// Every source restored (or, dry run, planned).
    pub ok: bool,
    /// The plans, in the order of `sources` (for tearing a rehearsal down).
    #[serde(skip)]
    pub plans: Vec<RestorePlan>,
}

/// Plans and (unless a dry run) performs the restore. Errors before anything was
/// touched are `Err`; once restores started, failures are in the report.
pub fn restore(req: AppRestore<'_>) -> Result<AppReport, RestoreError> {
    let started = Instant::now();
    let AppRestore {
        cfg,
        app,
        profile,
        at,
        dry_run,
    } = req;
    let refused = |m: String| RestoreError::Refused(m);
    let prof = app.profiles.get(profile).ok_or_else(|| {
        let known: Vec<&str> = app.profiles.keys().map(String::as_str).collect();
        refused(format!(
            "application `{}` has no profile `{profile}` ({}); add [application.profile.{profile}.SOURCE] tables",
            app.name,
            if known.is_empty() { "it has none".into() } else { format!("profiles: {}", known.join(", ")) }
        ))
    })?;
    if let Some(s) = app.sources.iter().find(|s| !prof.targets.contains_key(*s)) {
        return Err(refused(format!(
            "profile `{profile}` of application `{}` has no target for source `{s}`: add [application.profile.{profile}.\"{s}\"] with its `target`",
            app.name
        )));
    }
    let points = point::list(&cfg.journal.path, &app.name).map_err(|e| refused(e.to_string()))?;
    let journal = Journal::open_read_only(&cfg.journal.path)?;
    let (cut_at, point_id) = match at {
        AppAt::Point(name) => {
            let p = point::find(&cfg.journal.path, &app.name, &name)
                .map_err(|e| refused(e.to_string()))?;
            let id = p.id.clone();
            (CutAt::Point(p), Some(id))
        }
        AppAt::Moment(TimeSpec::At(t)) => (CutAt::Moment(t), None),
        AppAt::Moment(TimeSpec::Latest) => {
            (CutAt::Moment(latest_common(&journal, app, &points)?), None)
        }
    };
    let moment = match &cut_at {
        CutAt::Point(p) => Timestamp::from_micros(p.moment_us),
        CutAt::Moment(t) => *t,
    };
    let cuts = point::cut(&cut_at, &app.sources, &points);
    let mut plans = Vec::new();
    for c in &cuts {
        let mut plan = restore::plan(&journal, &c.source, TimeSpec::At(c.at))?;
        if let Some(through) = c.through_seq {
            cap(&journal, &mut plan, through)?;
        }
        plans.push(plan);
    }
    drop(journal);
    let mut reports: Vec<SourceReport> = cuts
        .into_iter()
        .zip(&plans)
        .map(|(cut, plan)| SourceReport {
            source: cut.source.clone(),
            kind: plan.source.kind,
            cut,
            plan: plan.to_string(),
            state: "planned",
            summary: None,
            error: None,
            preview: Vec::new(),
        })
        .collect();
    let names: Vec<String> = reports.iter().map(|r| r.source.clone()).collect();
    let plans = &plans;
    let one = |i: usize,
               dry: bool,
               gate: Option<&Gate>,
               progress: &mut dyn ProgressSink|
     -> Result<Outcome, RestoreError> {
        let name = &names[i];
        let t = &prof.targets[name];
        let journal = Journal::open_read_only(&cfg.journal.path)?;
        let captured: Vec<String> = journal.sources().into_iter().map(|s| s.name).collect();
        let request = Request {
            journal: &journal,
            plan: &plans[i],
            target: &t.url,
            options: &t.options,
            force: t.force,
            dry_run: dry,
            into_live_source: false,
            live_sources: live_sources(cfg, plans[i].source.kind, &captured),
            timeouts: cfg.timeouts,
            settings: cfg.source(name).map(|s| s.settings.as_ref()),
            gate,
        };
        driver::restore(request, progress)
    };
    let outcomes: Vec<(usize, Result<Outcome, RestoreError>)> = if dry_run {
        (0..reports.len())
            .map(|i| (i, one(i, true, None, &mut NoProgress)))
            .collect()
    } else {
        let kinds: Vec<SourceKind> = reports.iter().map(|r| r.kind).collect();
        run_all(&names, &kinds, &one)
    };
    for (i, r) in outcomes {
        let rep = &mut reports[i];
        match r {
            Ok(Outcome::DryRun(lines)) => rep.preview = lines,
            Ok(Outcome::Done(s)) => {
                rep.state = "restored";
                rep.summary = Some(*s);
            }
            Err(e) => {
                rep.state = match &e {
                    RestoreError::Held(_) => "held",
                    RestoreError::Failed { error, .. }
                        if matches!(**error, RestoreError::Stopped(_)) =>
                    {
                        "stopped"
                    }
                    _ => "failed",
                };
                rep.error = Some(e.to_string());
            }
        }
    }
    let ok = reports
        .iter()
        .all(|r| r.state == if dry_run { "planned" } else { "restored" });
    Ok(AppReport {
        application: app.name.clone(),
        profile: profile.to_string(),
        moment,
        point: point_id,
        sources: reports,
        seconds: started.elapsed().as_secs_f64(),
        ok,
        plans: plans.clone(),
    })
}

/// The first failure of an application restore: every other source's progress
/// report turns into [`RestoreError::Stopped`] once it is set.
#[derive(Default)]
struct Halt(Mutex<Option<String>>);

impl Halt {
    fn set(&self, why: String) {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        h.get_or_insert(why);
    }

    fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ProgressSink for &Halt {
    fn update(&mut self, _: &str, _: u64, _: Option<u64>) -> Result<(), RestoreError> {
        match self.get() {
            Some(why) => Err(RestoreError::Stopped(why)),
            None => Ok(()),
        }
    }
}

type OneRestore<'a> = dyn Fn(usize, bool, Option<&Gate>, &mut dyn ProgressSink) -> Result<Outcome, RestoreError>
    + Sync
    + 'a;

/// Runs every source's restore at once: data sources free, Kubernetes sources
/// held behind a gate opened when every data source restored. The first failure
/// halts the other data sources and shuts the gate.
fn run_all(
    names: &[String],
    kinds: &[SourceKind],
    one: &OneRestore<'_>,
) -> Vec<(usize, Result<Outcome, RestoreError>)> {
    let (halt, never, gate) = (Halt::default(), Halt::default(), Gate::default());
    let (halt, never, gate) = (&halt, &never, &gate);
    let failed = |i: usize, e: &RestoreError| {
        if !matches!(e, RestoreError::Held(_)) {
            let why = format!("source `{}` failed", names[i]);
            halt.set(why.clone());
            gate.shut(why);
        }
    };
    std::thread::scope(|scope| {
        let spawn = |i: usize, held: bool| {
            let handle = scope.spawn(move || {
                // A held restore is not stopped: its workloads cannot run, and a
                // whole definition is the better place to resume from.
                let mut sink = if held { never } else { halt };
                let r = one(i, false, held.then_some(gate), &mut sink);
                if let Err(e) = &r {
                    failed(i, e);
                }
                r
            });
            (i, handle)
        };
        let definition = |i: &usize| kinds[*i] == SourceKind::Kubernetes;
        let data: Vec<_> = (0..names.len())
            .filter(|i| !definition(i))
            .map(|i| spawn(i, false))
            .collect();
        let held: Vec<_> = (0..names.len())
            .filter(definition)
            .map(|i| spawn(i, true))
            .collect();
        let join = |(i, h): (usize, std::thread::ScopedJoinHandle<'_, _>)| {
            let r = h.join().unwrap_or_else(|_| {
                let e = RestoreError::Apply("restore thread panicked".into());
                failed(i, &e);
                Err(e)
            });
            (i, r)
        };
        let mut out: Vec<_> = data.into_iter().map(join).collect();
        if halt.get().is_none() {
            gate.open();
        }
        out.extend(held.into_iter().map(join));
        out
    })
}

/// Restores no further than `through` (a marker's sequence).
fn cap(journal: &Journal, plan: &mut RestorePlan, through: u64) -> Result<(), RestoreError> {
    if plan.parts.is_empty() && plan.last_seq > through {
        plan.last_seq = through;
        plan.events = if through >= plan.first_seq {
            journal.count_events(plan.source.id, plan.first_seq, through)?
        } else {
            0
        };
    }
    Ok(())
}

/// The newest instant every source of `app` covers, each corrected by its offset.
fn latest_common(
    journal: &Journal,
    app: &Application,
    points: &[point::Point],
) -> Result<Timestamp, RestoreError> {
    let mut newest: Option<i64> = None;
    let probe = point::cut(
        &CutAt::Moment(Timestamp::from_micros(0)),
        &app.sources,
        points,
    );
    for c in probe {
        let info = journal.source(&c.source)?;
        let covered = info
            .stats
            .coverage_us
            .ok_or_else(|| RestoreError::NoCoverage(c.source.clone()))?;
        let t = covered - c.offset_us;
        newest = Some(newest.map_or(t, |n| n.min(t)));
    }
    Ok(Timestamp::from_micros(newest.unwrap_or(0)))
}

/// `(name, url)` of every configured source of `kind` the journal captures (or
/// that is listed in the configuration), for the driver's live-source check.
pub fn live_sources(cfg: &Config, kind: SourceKind, captured: &[String]) -> Vec<(String, String)> {
    cfg.sources
        .iter()
        .filter(|s| s.kind() == kind)
        .filter(|s| captured.iter().any(|c| c == s.name()) || !cfg.is_discovered(s.name()))
        .filter_map(|s| s.settings.url().map(|u| (s.name().to_string(), u)))
        .collect()
}
