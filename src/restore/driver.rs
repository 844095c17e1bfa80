//! The one restore driver for every kind: checks, then the kind's [`Target`](super::Target), then
//! its digest. The order is the contract of [`super`]:
//!
//! 1. the target URL must be of the source's kind, and every kind-specific option
//!    must be one the kind declares;
//! 2. `--dry-run` stops here with the target's preview, having changed nothing
//!    (most kinds do not even connect; Kubernetes reads the target to diff it);
//! 3. the target must not be one of the journal's own live sources (same server
//!    identity and database) unless `--into-live-source`;
//! 4. a target that holds data is refused unless `--force`;
//! 5. apply, reporting progress; a failure says what a re-run does;
//! 6. with a [`Gate`] (an application restore holds its Kubernetes sources until
//!    the data is in place): wait at the gate, then release the hold, or leave it
//!    held and say so if the gate is shut;
//! 7. the digest of the target, as `tidemark digest` computes it.

use std::io::{IsTerminal, Write};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Applied, ProgressSink, RestoreError, RestorePlan};
use crate::config::{redact_url, Timeouts};
use crate::connectors::{self, Connector, KindOptions, OptionFor};
use crate::digest::Digest;
use crate::journal::Journal;

/// One restore, as the command line asked for it.
pub struct Request<'a> {
    /// The journal.
    pub journal: &'a Journal,
    /// What to restore (from [`super::plan`]).
    pub plan: &'a RestorePlan,
    /// Where to.
    pub target: &'a str,
    /// Kind-specific options given.
    pub options: &'a KindOptions,
    /// The target may hold data.
    pub force: bool,
    /// Plan only.
    pub dry_run: bool,
    /// The target may be a captured database.
    pub into_live_source: bool,
    /// `(name, url)` of every configured source of the plan's kind.
    pub live_sources: Vec<(String, String)>,
    /// Connection timeouts.
    pub timeouts: Timeouts,
    /// The configured source's settings (keys for sealed payloads), if configured.
    pub settings: Option<&'a dyn connectors::SourceSettings>,
    /// Restore held, released only once this gate opens (see [`super::Target::hold`]).
    pub gate: Option<&'a Gate>,
}

/// Where a held restore waits: opened once what it waits for ended well, or shut
/// with the reason it did not. The first word is final.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<Option<Result<(), String>>>,
    changed: Condvar,
}

impl Gate {
    /// Lets the held restore go on to its release.
    pub fn open(&self) {
        self.decide(Ok(()));
    }

    /// Keeps it held; `why` ends up in its error.
    pub fn shut(&self, why: String) {
        self.decide(Err(why));
    }

    fn decide(&self, r: Result<(), String>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_none() {
            *s = Some(r);
        }
        self.changed.notify_all();
    }

    /// Blocks until the gate is opened or shut.
    pub fn wait(&self) -> Result<(), String> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = &*s {
                return r.clone();
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// What a finished restore reports (`restore --json` prints it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreSummary {
    /// The source restored.
    pub source: String,
    /// Its kind.
    pub kind: String,
    /// The moment restored to.
    pub at: String,
    /// The target, password masked.
    pub target: String,
    /// Base image used, if any.
    pub image: Option<u64>,
    /// Events in the plan.
    pub events: u64,
    /// What the target applied.
    pub applied: Applied,
    /// Wall time of apply plus digest.
    pub seconds: f64,
    /// The target's digest after the restore.
    pub digest: Digest,
}

/// What `restore` produced.
pub enum Outcome {
    /// `--dry-run`: the kind's preview lines; nothing was touched.
    DryRun(Vec<String>),
    /// The restore ran.
    Done(Box<RestoreSummary>),
}

/// Runs one restore; see the module docs for the order of checks.
pub fn restore(req: Request<'_>, progress: &mut dyn ProgressSink) -> Result<Outcome, RestoreError> {
    let kind = req.plan.source.kind;
    let connector = connectors::for_kind(kind).ok_or(RestoreError::NotAvailable(kind))?;
    check_target_url(connector, req.target)?;
    connectors::check_options(connector, req.options, OptionFor::Restore)
        .map_err(RestoreError::Options)?;
    let mut target = connector.target(req.target, req.options, &req.timeouts)?;
    if let Some(s) = req.settings {
        target.configure(s);
    }
    if req.dry_run {
        return Ok(Outcome::DryRun(target.preview(req.journal, req.plan)?));
    }
    if !req.into_live_source {
        refuse_live_source(connector, &req)?;
    }
    if let Some(holds) = target.occupied(req.journal, req.plan)? {
        if !req.force {
            return Err(RestoreError::Occupied {
                target: target.describe(),
                holds,
                effect: target.force_effect(),
            });
        }
        tracing::warn!(target = %target.describe(), %holds, "--force: {}", target.force_effect());
    }
    let started = Instant::now();
    let gate = req.gate.filter(|_| target.hold());
    let failed = |error: RestoreError, rerun| match error {
        RestoreError::Refused(_) => error,
        error => RestoreError::Failed {
            error: Box::new(error),
            rerun,
        },
    };
    let mut applied = target
        .apply(req.journal, req.plan, req.force, progress)
        .map_err(|e| failed(e, target.rerun()))?;
    if let Some(gate) = gate {
        if let Err(why) = gate.wait() {
            return Err(RestoreError::Held(format!(
                "{} holds everything restored, held from running (see its restore's notes): not released because {why}; once the data is in place, run the same restore again with --force to release it",
                target.describe()
            )));
        }
        let released = target.release().map_err(|e| failed(e, target.rerun()))?;
        applied.notes.push(released);
    }
    let digest = target.digest()?;
    Ok(Outcome::Done(Box::new(RestoreSummary {
        source: req.plan.source.name.clone(),
        kind: kind.to_string(),
        at: req.plan.at.to_rfc3339(),
        target: target.describe(),
        image: req.plan.image.as_ref().map(|m| m.id),
        events: req.plan.events,
        applied,
        seconds: started.elapsed().as_secs_f64(),
        digest,
    })))
}

/// Removes what a restore of `plan` put into `target` ([`super::Target::teardown`]).
pub fn teardown(
    journal: &Journal,
    plan: &RestorePlan,
    target: &str,
    options: &KindOptions,
    timeouts: &Timeouts,
    settings: Option<&dyn connectors::SourceSettings>,
) -> Result<String, RestoreError> {
    let kind = plan.source.kind;
    let connector = connectors::for_kind(kind).ok_or(RestoreError::NotAvailable(kind))?;
    check_target_url(connector, target)?;
    let mut t = connector.target(target, options, timeouts)?;
    if let Some(s) = settings {
        t.configure(s);
    }
    t.teardown(journal, plan)
}

/// The target must use one of the kind's schemes.
fn check_target_url(connector: &dyn Connector, url: &str) -> Result<(), RestoreError> {
    crate::config::check_scheme(url, connector.schemes()).map_err(|_| {
        RestoreError::Options(format!(
            "--target `{}` is not a {} URL; use {}://...",
            redact_url(url),
            connector.kind(),
            connector.schemes()[0]
        ))
    })
}

/// Refuses a target whose identity is that of a configured source of the kind.
fn refuse_live_source(connector: &dyn Connector, req: &Request<'_>) -> Result<(), RestoreError> {
    if req.live_sources.is_empty() {
        return Ok(());
    }
    let target_id = connector
        .identity(req.target, &req.timeouts)
        .map_err(|e| RestoreError::Target(e.to_string()))?;
    for (name, url) in &req.live_sources {
        match connector.identity(url, &req.timeouts) {
            Ok(id) if id == target_id => {
                return Err(RestoreError::IntoLiveSource {
                    target: redact_url(req.target),
                    source_name: name.clone(),
                })
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(source = %name, %error, "cannot reach the source to check that the target is not it")
            }
        }
    }
    Ok(())
}

/// Progress on stderr while it is a terminal, at most a few times a second: what
/// is done of what, the rate, and an estimate of the time left in that phase.
pub struct TerminalProgress {
    show: bool,
    last: Instant,
    shown: bool,
    /// The phase shown (`what` up to its first `;`), when it started, and the
    /// units done then.
    phase: Option<(String, Instant, u64)>,
}

impl Default for TerminalProgress {
    fn default() -> Self {
        TerminalProgress {
            show: std::io::stderr().is_terminal(),
            last: Instant::now(),
            shown: false,
            phase: None,
        }
    }
}

/// `n` as bytes (`12.3 MiB`) when `what` counts bytes, else as a number.
fn amount(what: &str, n: u64) -> String {
    if !what.starts_with("bytes") {
        return n.to_string();
    }
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

/// The progress line: done of total, rate, and time left if the total is known.
pub fn progress_line(what: &str, done: u64, total: Option<u64>, rate: f64) -> String {
    let of = total.map_or(String::new(), |t| format!(" of {}", amount(what, t)));
    let mut line = format!("{}{of} {what}", amount(what, done));
    if rate > 0.0 {
        line.push_str(&format!(", {}/s", amount(what, rate as u64)));
        if let Some(t) = total.filter(|&t| t > done) {
            line.push_str(&format!(", about {:.0} s left", (t - done) as f64 / rate));
        }
    }
    line
}

impl ProgressSink for TerminalProgress {
    fn update(&mut self, what: &str, done: u64, total: Option<u64>) -> Result<(), RestoreError> {
        if !self.show {
            return Ok(());
        }
        let key = what.split(';').next().unwrap_or(what);
        if self.phase.as_ref().is_none_or(|(k, _, _)| k != key) {
            self.phase = Some((key.to_string(), Instant::now(), done));
        }
        if self.last.elapsed() < Duration::from_millis(250) {
            return Ok(());
        }
        self.last = Instant::now();
        self.shown = true;
        let rate = self.phase.as_ref().map_or(0.0, |(_, t0, d0)| {
            let secs = t0.elapsed().as_secs_f64();
            if secs > 0.5 {
                done.saturating_sub(*d0) as f64 / secs
            } else {
                0.0
            }
        });
        eprint!(
            "\r\x1b[Krestoring: {}",
            progress_line(what, done, total, rate)
        );
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

impl Drop for TerminalProgress {
    fn drop(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
        }
    }
}

/// Progress nobody sees (`--json`, tests).
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn update(&mut self, _: &str, _: u64, _: Option<u64>) -> Result<(), RestoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod progress_tests {
    use super::progress_line;

    #[test]
    fn progress_shows_amounts_rate_and_time_left() {
        assert_eq!(
            progress_line("bytes of the base image; public.t: 10 rows", 1 << 20, Some(3 << 20), 1048576.0),
            "1.0 MiB of 3.0 MiB bytes of the base image; public.t: 10 rows, 1.0 MiB/s, about 2 s left"
        );
        assert_eq!(
            progress_line("journal events read", 50, Some(100), 0.0),
            "50 of 100 journal events read"
        );
    }
}
