//! `tidemark run`: capture every configured source until SIGINT/SIGTERM, each
//! under its own supervisor (see [`crate::capture::supervisor`]).
//!
//! Start-up writes nothing until every check passed: every source is built and
//! preflighted first. A configuration or permission problem refuses the start; an
//! unreachable server starts its source in `retrying`. Exit status: non-zero when
//! every source has stopped with an error, when any source stopped with an error by
//! the time of a clean shutdown, or at the first failure with `--fail-fast`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::task::JoinSet;

use crate::capture::supervisor::{self, Factory};
use crate::capture::{self, CaptureError, CaptureOptions, SourceJournal};
use crate::config::Config;
use crate::time::Timestamp;

/// How often retention runs while capturing.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The background scrub: first an hour after start, then once a day (one pass
/// reads the journal through once; `tidemark verify` runs one now).
const SCRUB_FIRST: Duration = Duration::from_secs(3600);
const SCRUB_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Flags of `run`.
#[derive(Debug, Default)]
pub struct Flags {
    /// Stop everything at the first permanent failure.
    pub fail_fast: bool,
    /// Take over slots this journal did not create.
    pub take_over_slots: bool,
}

pub fn run(cfg: &Config, flags: Flags) -> Result<()> {
    let opts = CaptureOptions {
        timeouts: cfg.timeouts,
        take_over_slots: flags.take_over_slots,
        ..Default::default()
    };
    // Build and preflight every capture before touching the journal.
    let mut built = Vec::new();
    for s in &cfg.sources {
        built.push((s, capture::build(s, &opts)?));
    }
    let retention = cfg.retention()?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let mut first_errors = Vec::new();
    rt.block_on(async {
        let checks = built.iter().map(|(_, source)| source.preflight());
        for ((s, _), checked) in built.iter().zip(futures_util::future::join_all(checks).await) {
            match checked {
                Ok(()) => first_errors.push(None),
                Err(e) if e.is_transient() => {
                    tracing::warn!(source = %s.name(), error = %e, "source unreachable at start-up; it starts in `retrying` and the others capture meanwhile");
                    first_errors.push(Some(e));
                }
                Err(e) => return Err(anyhow::Error::new(e)),
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    drop(built);
    let journal = Arc::new(super::open_for_write(cfg)?);
    rt.block_on(async move {
        let (trigger, shutdown) = capture::shutdown_pair();
        let mut tasks = JoinSet::new();
        for (s, first_error) in cfg.sources.iter().zip(first_errors) {
            let id = journal.register_source(s.name(), s.kind())?;
            tracing::info!(source = %s.name(), kind = %s.kind(), "capture starting");
            let sj = SourceJournal::new(Arc::clone(&journal), id, s.name().to_string());
            let (settings, name, opts) = (Arc::clone(&s.settings), s.name().to_string(), s.capture_options(&opts));
            let factory: Factory = Box::new(move || settings.capture(&name, &opts));
            let name = s.name().to_string();
            let fut = supervisor::supervise(factory, sj, shutdown.clone(), first_error);
            tasks.spawn(async move { (name, fut.await) });
        }
        if let Some(window) = retention {
            let (journal, mut stop) = (Arc::clone(&journal), shutdown.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PRUNE_EVERY);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.wait() => return,
                    }
                    let j = Arc::clone(&journal);
                    match tokio::task::spawn_blocking(move || j.prune(Timestamp::now(), window, false)).await {
                        Ok(Err(error)) => tracing::error!(%error, "retention failed"),
                        Err(error) => tracing::error!(%error, "retention task failed"),
                        Ok(Ok(_)) => {}
                    }
                }
            });
        }
        {
            let (journal, mut stop) = (Arc::clone(&journal), shutdown.clone());
            tokio::spawn(async move {
                let first = tokio::time::Instant::now() + SCRUB_FIRST;
                let mut tick = tokio::time::interval_at(first, SCRUB_EVERY);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.wait() => return,
                    }
                    let j = Arc::clone(&journal);
                    match tokio::task::spawn_blocking(move || j.scrub()).await {
                        Ok(Ok(r)) if r.damage.is_empty() => tracing::info!(events = r.events, images = r.images, "journal scrub found no damage"),
                        Ok(Ok(r)) => {
                            for d in &r.damage {
                                tracing::error!(record = %d.record, affects = %d.affects, "journal scrub: damaged record");
                            }
                        }
                        Ok(Err(error)) => tracing::error!(%error, "journal scrub failed"),
                        Err(error) => tracing::error!(%error, "journal scrub task failed"),
                    }
                }
            });
        }
        tokio::spawn(super::app::index_keys(Arc::clone(&journal), shutdown.clone()));
        for app in cfg.applications.iter().filter(|a| a.points.is_some()) {
            spawn_points(cfg.clone(), app.clone(), Arc::clone(&journal), retention, shutdown.clone());
        }
        for app in &cfg.applications {
            if let Some((every, profile)) = app.rehearse.clone() {
                spawn_rehearsals(cfg.clone(), app.clone(), every, profile, shutdown.clone());
            }
        }
        let total = tasks.len();
        let mut failed: Vec<(String, CaptureError)> = Vec::new();
        let mut signalled = false;
        let stop_signal = wait_for_signal();
        tokio::pin!(stop_signal);
        loop {
            tokio::select! {
                r = &mut stop_signal, if !shutdown.is_fired() => {
                    r?;
                    signalled = true;
                    tracing::info!("stopping: appending what is in flight and acknowledging it");
                    trigger.fire();
                }
                done = tasks.join_next() => match done {
                    None => break,
                    Some(Ok((_, Ok(())))) => {}
                    Some(Ok((name, Err(error)))) => {
                        failed.push((name, error));
                        if flags.fail_fast && !shutdown.is_fired() {
                            tracing::error!("--fail-fast: stopping every source");
                            trigger.fire();
                        }
                    }
                    Some(Err(error)) => {
                        failed.push(("?".into(), CaptureError::config("?", format!("capture task panicked: {error}"))));
                        trigger.fire();
                    }
                },
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let list = failed
            .iter()
            .map(|(_, e)| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        if failed.len() == total && !signalled {
            bail!("every source stopped: {list}");
        }
        bail!("{} of {total} sources stopped with an error: {list}", failed.len())
    })
}

/// Takes `app`'s recovery points on its schedule (`points = "every 30s"`) and
/// drops those past `keep_points` (else the journal's retention) or before its
/// sources' floors. A failed point is logged; the next is tried on schedule.
fn spawn_points(
    cfg: Config,
    app: crate::config::Application,
    journal: Arc<crate::journal::Journal>,
    retention: Option<Duration>,
    mut stop: capture::Shutdown,
) {
    let Some(every) = app.points else { return };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await; // the first tick is immediate: let capture start first
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait() => return,
            }
            let (cfg, app, journal) = (cfg.clone(), app.clone(), Arc::clone(&journal));
            let done = tokio::task::spawn_blocking(move || {
                let made = crate::app::point::create(
                    &cfg,
                    &app,
                    None,
                    None,
                    every.max(Duration::from_secs(30)),
                );
                let floor = app
                    .sources
                    .iter()
                    .filter_map(|s| journal.source(s).ok()?.stats.floor_us)
                    .max();
                let keep = app.keep_points.or(retention);
                let expired = match keep {
                    Some(keep) => {
                        crate::app::point::expire(&cfg.journal.path, &app.name, keep, floor)
                    }
                    None => crate::app::point::expire(
                        &cfg.journal.path,
                        &app.name,
                        Duration::MAX,
                        floor,
                    ),
                };
                (app.name, made, expired)
            })
            .await;
            match done {
                Ok((app, Ok(p), _)) => {
                    tracing::info!(application = %app, point = %p.id, "recovery point taken")
                }
                Ok((app, Err(error), _)) => {
                    tracing::error!(application = %app, %error, "scheduled recovery point failed")
                }
                Err(error) => tracing::error!(%error, "recovery point task failed"),
            }
        }
    });
}

/// Rehearses `app` into `profile` every `every` (the first after one interval),
/// recording each result; a failed rehearsal is logged as an error.
fn spawn_rehearsals(
    cfg: Config,
    app: crate::config::Application,
    every: Duration,
    profile: String,
    mut stop: capture::Shutdown,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait() => return,
            }
            let (cfg, app, profile) = (cfg.clone(), app.clone(), profile.clone());
            let at = crate::app::restore::AppAt::Moment(crate::time::TimeSpec::Latest);
            let done = tokio::task::spawn_blocking(move || {
                crate::app::rehearse::rehearse(&cfg, &app, &profile, at, false)
                    .map(|r| (app.name, r))
            })
            .await;
            match done {
                Ok(Ok((app, r))) if r.ok => {
                    tracing::info!(application = %app, rehearsal = %r.id, rto_seconds = r.rto_seconds, "rehearsal passed")
                }
                Ok(Ok((app, r))) => {
                    tracing::error!(application = %app, rehearsal = %r.id, "rehearsal FAILED: see `tidemark status`")
                }
                Ok(Err(error)) => tracing::error!(%error, "rehearsal could not run"),
                Err(error) => tracing::error!(%error, "rehearsal task failed"),
            }
        }
    });
}

/// Completes on SIGINT or SIGTERM.
async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot install the SIGINT handler"),
        _ = term.recv() => Ok(()),
    }
}
