//! `tidemark log`: print journal events, one per line (or JSON lines).

use std::io::Write;

use anyhow::Result;
use serde_json::{json, Value};

use super::fmt_time;
use crate::config::Config;
use crate::event::{ChangeEvent, Payload};
use crate::journal::LogEntry;
use crate::time::{TimeSpec, Timestamp};

pub fn log(
    cfg: &Config,
    source: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
    limit: Option<u64>,
    as_json: bool,
) -> Result<()> {
    let journal = super::open_read_only(cfg)?;
    let bound = |flag, v: Option<&str>| -> Result<Option<Timestamp>> {
        Ok(match v.map(|v| super::parse_time(flag, v)).transpose()? {
            None => None,
            Some(TimeSpec::Latest) => Some(Timestamp::now()),
            Some(TimeSpec::At(t)) => Some(t),
        })
    };
    let (since, until) = (bound("since", since)?, bound("until", until)?);
    let entries: Box<dyn Iterator<Item = Result<LogEntry, _>>> = match source {
        Some(name) => {
            let src = journal.source(name)?.id;
            // Both ends come from the time index: a seek each, not a scan.
            let from = match since {
                Some(t) => journal
                    .seq_at_time(src, Timestamp::from_micros(t.as_micros().saturating_sub(1)))?
                    .map_or(1, |s| s + 1),
                None => 1,
            };
            let through = match until {
                Some(t) => journal.seq_at_time(src, t)?.unwrap_or(0),
                None => u64::MAX,
            };
            Box::new(journal.events(src, from, through))
        }
        None => Box::new(journal.log_from(1).filter(move |e| match e {
            Ok(e) => {
                since.is_none_or(|t| e.event.time_us() >= t.as_micros())
                    && until.is_none_or(|t| e.event.time_us() <= t.as_micros())
            }
            Err(_) => true,
        })),
    };
    let out = std::io::stdout();
    let mut out = out.lock();
    for entry in
        entries.take(limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX)))
    {
        let LogEntry { seq, event } = entry?;
        // What the source's connector adds (a Helm release decoded with its key).
        let extra = cfg
            .source(&event.source)
            .and_then(|s| s.settings.describe_event(&event));
        let line = if as_json {
            let mut doc = describe(seq, &event);
            if let Some((_, more)) = &extra {
                doc["decoded"] = more.clone();
            }
            doc.to_string()
        } else {
            format!(
                "{seq:>10} {} {:<16} {:<24} {}",
                Timestamp::from_micros(event.time_us()),
                event.source,
                event
                    .position
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                match &extra {
                    Some((text, _)) => format!("{} {text}", summary(&event)),
                    None => summary(&event),
                }
            )
        };
        if writeln!(out, "{line}").is_err() {
            break; // stdout closed (e.g. piped into head)
        }
    }
    Ok(())
}

/// The event as JSON.
fn describe(seq: u64, e: &ChangeEvent) -> Value {
    let payload = e.payload.as_ref().map_or(Value::Null, Payload::to_json);
    json!({
        "seq": seq,
        "source": e.source,
        "position": e.position.as_ref().map(|p| p.to_string()),
        "commit_time": fmt_time(e.commit_time_us),
        "capture_time": fmt_time(Some(e.capture_time_us)),
        "txn": e.txn.as_ref().map(|t| json!({ "id": t.id, "commit": t.commit })),
        "payload": payload,
    })
}

/// One-line summary for the text form.
fn summary(e: &ChangeEvent) -> String {
    e.payload
        .as_ref()
        .map_or_else(|| "-".into(), Payload::summary)
}
