//! Recovery points: one cut across all of an application's sources, measured.
//!
//! A point is written by [`create`]: markers into every source's own log
//! ([`super::marker`]), then one immutable JSON file
//! `<journal>/points/<application>/<id>.json` (written to a temporary name,
//! fsynced, renamed, directory fsynced). Points live beside the journal rather
//! than in it so that they can be taken while `tidemark run` holds the journal.
//!
//! # The cut and its uncertainty
//! Source *s*'s marker was committed at some instant inside its write's round
//! trip `[from_s, until_s]` on tidemark's clock; its middle `mid_s` is that
//! instant's best estimate, half the round trip the error. The marker's time in
//! the journal, `J_s`, is on the source's own time axis (its commit clock, or
//! tidemark's receive clock for kinds without commit times). So
//! `offset_s = J_s - mid_s` turns tidemark's clock into source *s*'s journal
//! time: clock skew plus, for receive-timed kinds, capture lag.
//!
//! The point's moment T is the middle of all markers' writes; source *s* is cut
//! just after its marker (journal sequence `seq_s`), which stands for T within
//! `uncertainty_s = |mid_s - T| + (until_s - from_s) / 2`.
//!
//! Any other moment T' is cut per source at `T' + offset_s`, with the offset the
//! nearest point measured; its uncertainty is that point's half round trip (the
//! offset may drift since). With no point at all, offsets are 0 and the
//! uncertainty is unmeasured: said so, never invented.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::marker::{self, MarkError};
use crate::config::{Application, Config};
use crate::time::Timestamp;

/// One recovery point, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Point {
    /// Unique within the application; sorts by time (`20261203T120102.123456Z`).
    pub id: String,
    /// The application.
    pub application: String,
    /// Optional label (`--label`).
    #[serde(default)]
    pub label: Option<String>,
    /// The point's instant T on tidemark's clock, µs since the epoch.
    pub moment_us: i64,
    /// The hook command run before and after the markers, if any.
    #[serde(default)]
    pub hook: Option<String>,
    /// Per source: where it is cut and how well.
    pub sources: BTreeMap<String, SourceCut>,
}

/// One source's cut in a point.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceCut {
    /// The marker event's sequence: the source is restored up to and including it.
    pub marker_seq: u64,
    /// The marker's journal time, µs.
    pub marker_time_us: i64,
    /// The marker write's round trip on tidemark's clock, µs.
    pub written_from_us: i64,
    /// See `written_from_us`.
    pub written_until_us: i64,
    /// Journal time minus tidemark's clock for this source, µs.
    pub offset_us: i64,
    /// How far the cut may be from the point's instant, µs.
    pub uncertainty_us: i64,
}

impl SourceCut {
    fn half_round_trip_us(&self) -> i64 {
        (self.written_until_us - self.written_from_us + 1) / 2
    }
}

/// One source's cut of a moment, marked or not.
#[derive(Debug, Clone, Serialize)]
pub struct Cut {
    /// The source.
    pub source: String,
    /// The moment on the source's journal time axis.
    pub at: Timestamp,
    /// Restore no further than this sequence (a marked point: its marker).
    pub through_seq: Option<u64>,
    /// The clock offset applied, µs.
    pub offset_us: i64,
    /// ± this many µs; `None`: not measured (no point has this source yet).
    pub uncertainty_us: Option<i64>,
    /// Where the offset comes from (`point 2026...Z`).
    pub measured_by: Option<String>,
}

impl Cut {
    /// `±3.2 ms` or `± unmeasured`.
    pub fn uncertainty_text(&self) -> String {
        match self.uncertainty_us {
            Some(u) => format!("±{:.1} ms", u as f64 / 1000.0),
            None => "± unmeasured (no recovery point of this source yet)".into(),
        }
    }
}

/// What to cut at: a moment of tidemark's clock, or a stored point.
#[derive(Debug, Clone)]
pub enum CutAt {
    /// Any moment: each source at it plus its measured offset.
    Moment(Timestamp),
    /// A stored point: each source just after its marker.
    Point(Point),
}

/// Why a point cannot be made, found or used.
#[derive(Debug, thiserror::Error)]
pub enum PointError {
    /// Writing or finding the markers failed.
    #[error(transparent)]
    Mark(#[from] MarkError),
    /// The hook command failed.
    #[error("the hook `{command}` ({phase} the markers) failed: {detail}; no point was recorded")]
    Hook {
        /// The command.
        command: String,
        /// `before` or `after`.
        phase: &'static str,
        /// Exit status or spawn error.
        detail: String,
    },
    /// Reading or writing the points directory failed.
    #[error("recovery points at {path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// No such point.
    #[error("application `{app}` has no recovery point `{name}`{known}")]
    Unknown {
        /// The application.
        app: String,
        /// The id or label asked for.
        name: String,
        /// The newest few, as a hint.
        known: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PointError + '_ {
    move |error| PointError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// The directory of `app`'s points.
pub fn dir(journal: &Path, app: &str) -> PathBuf {
    journal.join("points").join(app)
}

/// An id for something made at `t` that sorts by time: `20261203T120102.123456Z`.
pub fn stamp(t: Timestamp) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(t.as_micros())
        .map(|t| t.format("%Y%m%dT%H%M%S%.6fZ").to_string())
        .unwrap_or_else(|| t.as_micros().to_string())
}

/// Every `*.json` record in `dir` (none if it does not exist).
pub fn read_all<T: serde::de::DeserializeOwned>(d: &Path) -> Result<Vec<T>, PointError> {
    let entries = match std::fs::read_dir(d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(d)(e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let path = e.map_err(io(d))?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read(&path).map_err(io(&path))?;
        out.push(serde_json::from_slice(&text).map_err(|e| PointError::Io {
            path: path.clone(),
            error: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?);
    }
    Ok(out)
}

/// Every point of `app`, oldest first.
pub fn list(journal: &Path, app: &str) -> Result<Vec<Point>, PointError> {
    let mut points: Vec<Point> = read_all(&dir(journal, app))?;
    points.sort_by(|a, b| a.moment_us.cmp(&b.moment_us).then(a.id.cmp(&b.id)));
    Ok(points)
}

/// The point of `app` whose id is `name`, else the newest labelled `name`.
pub fn find(journal: &Path, app: &str, name: &str) -> Result<Point, PointError> {
    let points = list(journal, app)?;
    if let Some(p) = points.iter().find(|p| p.id == name) {
        return Ok(p.clone());
    }
    if let Some(p) = points
        .iter()
        .rev()
        .find(|p| p.label.as_deref() == Some(name))
    {
        return Ok(p.clone());
    }
    let newest: Vec<&str> = points.iter().rev().take(3).map(|p| p.id.as_str()).collect();
    Err(PointError::Unknown {
        app: app.into(),
        name: name.into(),
        known: if newest.is_empty() {
            ": it has none yet (tidemark point create)".into()
        } else {
            format!(" (newest: {})", newest.join(", "))
        },
    })
}

/// Takes a point of `app` now: hook before, markers, hook after, the point file.
pub fn create(
    cfg: &Config,
    app: &Application,
    label: Option<&str>,
    hook: Option<&str>,
    wait: Duration,
) -> Result<Point, PointError> {
    let sources: Vec<_> = app.sources.iter().filter_map(|n| cfg.source(n)).collect();
    let now = Timestamp::now();
    let id = stamp(now);
    if let Some(cmd) = hook {
        run_hook(cmd, "before", app, &id)?;
    }
    let placed = marker::mark_all(cfg, &sources, &id, &cfg.journal.path, wait);
    if let Some(cmd) = hook {
        // The application is told to go on even when marking failed.
        let after = run_hook(cmd, "after", app, &id);
        if placed.is_ok() {
            after?;
        }
    }
    let placed = placed?;
    let mids: Vec<i64> = placed
        .values()
        .map(|p| (p.written_from.as_micros() + p.written_until.as_micros()) / 2)
        .collect();
    let lo = placed.values().map(|p| p.written_from.as_micros()).min();
    let hi = placed.values().map(|p| p.written_until.as_micros()).max();
    let moment_us = match (lo, hi) {
        (Some(lo), Some(hi)) => (lo + hi) / 2,
        _ => now.as_micros(),
    };
    let sources = placed
        .into_iter()
        .zip(mids)
        .map(|((name, p), mid)| {
            let (from, until) = (p.written_from.as_micros(), p.written_until.as_micros());
            let cut = SourceCut {
                marker_seq: p.seq,
                marker_time_us: p.time.as_micros(),
                written_from_us: from,
                written_until_us: until,
                offset_us: p.time.as_micros() - mid,
                uncertainty_us: (mid - moment_us).abs() + (until - from + 1) / 2,
            };
            (name, cut)
        })
        .collect();
    let point = Point {
        id,
        application: app.name.clone(),
        label: label.map(str::to_string),
        moment_us,
        hook: hook.map(str::to_string),
        sources,
    };
    store(&cfg.journal.path, &point)?;
    Ok(point)
}

/// Writes `point` durably under a new name (never over an existing one).
pub fn store(journal: &Path, point: &Point) -> Result<(), PointError> {
    let d = dir(journal, &point.application);
    let body = serde_json::to_vec_pretty(point).map_err(|e| PointError::Io {
        path: d.clone(),
        error: std::io::Error::other(e),
    })?;
    write_once(&d, &point.id, &body)
}

/// Writes `<d>/<name>.json` durably (temporary file, fsync, rename, fsync of the
/// directory), refusing to replace one that exists.
pub fn write_once(d: &Path, name: &str, body: &[u8]) -> Result<(), PointError> {
    std::fs::create_dir_all(d).map_err(io(d))?;
    let path = d.join(format!("{name}.json"));
    let tmp = d.join(format!(".{name}.json.partial"));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(body).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    if path.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&path)(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "a point with this id exists",
        )));
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(io(d))?;
    Ok(())
}

/// Drops `app`'s points older than `keep` (and always those before `floor_us`,
/// the newest floor of its sources, which no longer restore); returns how many.
pub fn expire(
    journal: &Path,
    app: &str,
    keep: Duration,
    floor_us: Option<i64>,
) -> Result<usize, PointError> {
    let horizon = Timestamp::now().saturating_sub(keep).as_micros();
    let mut dropped = 0;
    for p in list(journal, app)? {
        let restorable = floor_us.is_none_or(|f| p.sources.values().all(|c| c.marker_time_us >= f));
        if p.moment_us < horizon || !restorable {
            let path = dir(journal, app).join(format!("{}.json", p.id));
            std::fs::remove_file(&path).map_err(io(&path))?;
            dropped += 1;
        }
    }
    Ok(dropped)
}

/// The cut of `at` for each of `sources`, using `points` (the application's, in
/// any order) for offsets.
pub fn cut(at: &CutAt, sources: &[String], points: &[Point]) -> Vec<Cut> {
    sources
        .iter()
        .map(|s| match at {
            CutAt::Point(p) => match p.sources.get(s) {
                Some(c) => Cut {
                    source: s.clone(),
                    at: Timestamp::from_micros(c.marker_time_us),
                    through_seq: Some(c.marker_seq),
                    offset_us: c.offset_us,
                    uncertainty_us: Some(c.uncertainty_us),
                    measured_by: Some(format!("point {}", p.id)),
                },
                // A source added to the application after the point: cut by time.
                None => moment_cut(s, Timestamp::from_micros(p.moment_us), points),
            },
            CutAt::Moment(t) => moment_cut(s, *t, points),
        })
        .collect()
}

fn moment_cut(source: &str, at: Timestamp, points: &[Point]) -> Cut {
    let nearest = points
        .iter()
        .filter_map(|p| p.sources.get(source).map(|c| (p, c)))
        .min_by_key(|(p, _)| (p.moment_us - at.as_micros()).abs());
    match nearest {
        Some((p, c)) => Cut {
            source: source.to_string(),
            at: Timestamp::from_micros(at.as_micros().saturating_add(c.offset_us)),
            through_seq: None,
            offset_us: c.offset_us,
            uncertainty_us: Some(c.half_round_trip_us()),
            measured_by: Some(format!("point {}", p.id)),
        },
        None => Cut {
            source: source.to_string(),
            at,
            through_seq: None,
            offset_us: 0,
            uncertainty_us: None,
            measured_by: None,
        },
    }
}

fn run_hook(cmd: &str, phase: &'static str, app: &Application, id: &str) -> Result<(), PointError> {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("TIDEMARK_APPLICATION", &app.name)
        .env("TIDEMARK_POINT", id)
        .env("TIDEMARK_HOOK_PHASE", phase)
        .status()
        .map_err(|e| PointError::Hook {
            command: cmd.into(),
            phase,
            detail: e.to_string(),
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(PointError::Hook {
            command: cmd.into(),
            phase,
            detail: status.to_string(),
        })
    }
}
