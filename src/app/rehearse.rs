//! `rehearse`: prove a recovery works, end to end, without touching production.
//!
//! A rehearsal restores the application into a sandbox profile (exactly as
//! `restore --app` would), runs the application's checks against the restored
//! targets, records the result (when, the cut, the recovery time, each source's
//! digest, each check's outcome), and tears the sandbox down (each target emptied
//! of what the restore put there) unless asked to keep it. Records are immutable
//! JSON files beside the points: `<journal>/points/<app>/rehearsals/<id>.json`.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::point::{self, PointError};
use super::restore::{AppAt, AppRestore};
use crate::config::{Application, Config};
use crate::journal::Journal;
use crate::restore::{driver, RestoreError};
use crate::time::Timestamp;

/// One check's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckResult {
    /// The command.
    pub command: String,
    /// It exited 0.
    pub ok: bool,
    /// How it ended (`exit status: 1`).
    pub status: String,
    /// The last lines it printed (stdout then stderr).
    pub output: String,
}

/// One source in a rehearsal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RehearsedSource {
    /// The source.
    pub source: String,
    /// As in `restore --app`: `restored`, `failed`, `stopped`, `held`.
    pub state: String,
    /// The restored target's digest.
    pub digest: Option<String>,
    /// Seconds its restore took.
    pub seconds: Option<f64>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// What the teardown did (or why it could not).
    pub teardown: Option<String>,
}

/// A rehearsal, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rehearsal {
    /// Sorts by time.
    pub id: String,
    /// The application.
    pub application: String,
    /// The sandbox profile.
    pub profile: String,
    /// The instant restored to.
    pub at: String,
    /// The point restored, if one was.
    pub point: Option<String>,
    /// When the rehearsal started.
    pub started: String,
    /// The restore's wall time: the recovery time measured.
    pub rto_seconds: f64,
    /// Every source restored and every check passed.
    pub ok: bool,
    /// Per source.
    pub sources: Vec<RehearsedSource>,
    /// Per check, in order.
    pub checks: Vec<CheckResult>,
    /// The sandbox was left in place (`--keep`).
    pub kept: bool,
}

/// Rehearses `app` into `profile` at `at`.
pub fn rehearse(
    cfg: &Config,
    app: &Application,
    profile: &str,
    at: AppAt,
    keep: bool,
) -> Result<Rehearsal, RestoreError> {
    let started = Timestamp::now();
    let report = super::restore::restore(AppRestore {
        cfg,
        app,
        profile,
        at,
        dry_run: false,
    })?;
    let prof = &app.profiles[profile];
    let mut checks = Vec::new();
    if report.ok {
        for cmd in &app.checks {
            checks.push(run_check(cmd, app, &report.moment, prof));
        }
    }
    let mut sources: Vec<RehearsedSource> = report
        .sources
        .iter()
        .map(|s| RehearsedSource {
            source: s.source.clone(),
            state: s.state.to_string(),
            digest: s.summary.as_ref().map(|x| x.digest.overall.clone()),
            seconds: s.summary.as_ref().map(|x| x.seconds),
            error: s.error.clone(),
            teardown: None,
        })
        .collect();
    if !keep {
        let journal = Journal::open_read_only(&cfg.journal.path)?;
        for (s, plan) in sources.iter_mut().zip(&report.plans) {
            let t = &prof.targets[&s.source];
            let settings = cfg.source(&s.source).map(|c| c.settings.as_ref());
            s.teardown = Some(
                match driver::teardown(&journal, plan, &t.url, &t.options, &cfg.timeouts, settings)
                {
                    Ok(done) => done,
                    Err(e) => format!("not torn down: {e}"),
                },
            );
        }
    }
    let ok = report.ok && checks.iter().all(|c| c.ok);
    let id = point::stamp(started);
    let r = Rehearsal {
        id,
        application: app.name.clone(),
        profile: profile.to_string(),
        at: report.moment.to_rfc3339(),
        point: report.point.clone(),
        started: started.to_rfc3339(),
        rto_seconds: report.seconds,
        ok,
        sources,
        checks,
        kept: keep,
    };
    store(&cfg.journal.path, &r).map_err(|e| RestoreError::Apply(e.to_string()))?;
    Ok(r)
}

/// `TIDEMARK_TARGET_<SOURCE>`: the source's name upper-cased, other characters `_`.
pub fn target_var(source: &str) -> String {
    let name: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("TIDEMARK_TARGET_{name}")
}

fn run_check(
    cmd: &str,
    app: &Application,
    at: &Timestamp,
    prof: &crate::config::Profile,
) -> CheckResult {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .env("TIDEMARK_APPLICATION", &app.name)
        .env("TIDEMARK_AT", at.to_rfc3339());
    for (source, t) in &prof.targets {
        c.env(target_var(source), &t.url);
    }
    match c.output() {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            CheckResult {
                command: cmd.to_string(),
                ok: out.status.success(),
                status: out.status.to_string(),
                output: crate::redact::redact_urls_in(&tail),
            }
        }
        Err(e) => CheckResult {
            command: cmd.to_string(),
            ok: false,
            status: format!("could not start: {e}"),
            output: String::new(),
        },
    }
}

fn dir(journal: &Path, app: &str) -> std::path::PathBuf {
    point::dir(journal, app).join("rehearsals")
}

fn store(journal: &Path, r: &Rehearsal) -> Result<(), PointError> {
    let body = serde_json::to_vec_pretty(r).map_err(|e| PointError::Io {
        path: dir(journal, &r.application),
        error: std::io::Error::other(e),
    })?;
    point::write_once(&dir(journal, &r.application), &r.id, &body)
}

/// Every rehearsal of `app`, oldest first.
pub fn list(journal: &Path, app: &str) -> Result<Vec<Rehearsal>, PointError> {
    let mut out: Vec<Rehearsal> = point::read_all(&dir(journal, app))?;
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}
