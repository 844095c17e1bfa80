//! Sequences at every moment of the history.
//!
//! Logical decoding does not send sequence advances (they are not transactional).
//! With each status round trip (about once a second) capture reads every sequence's
//! `last_value`; when any changed, it writes them into the source's WAL as one
//! transactional logical message. The message arrives in the stream in commit
//! order, is journaled as a [`PgOp::Sequence`](crate::event::PgOp) change, and a
//! restore replays it in place: a restore to T sets each sequence to its value as
//! last sampled before T. Values used between that sample and T are covered at the
//! end of a restore, which raises each sequence to the largest value its owning
//! column holds. A source that refuses the write (read only, no privilege) is
//! warned about once and restored that way alone.

use tokio_postgres::Client;

use super::conn::db_error;
use super::setup::quote_literal;
use super::PgError;

/// Prefix of the logical messages carrying sequence values.
pub const PREFIX: &str = "tidemark.seq";

/// `qualified-name value` lines, one per sequence that has a value, in name order.
const QUERY: &str = "SELECT coalesce(string_agg(format('%I.%I', schemaname, sequencename) || ' ' || last_value, E'\\n' ORDER BY schemaname, sequencename), '')
     FROM pg_sequences WHERE last_value IS NOT NULL AND schemaname <> 'tidemark'";

/// What capture last wrote of the source's sequences.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum State {
    /// Nothing yet in this attempt.
    #[default]
    Unknown,
    /// These values were written (the message's content).
    Written(String),
    /// The source refused the write: sampling is off.
    Off,
}

/// Reads the source's sequences and writes them into the WAL if they changed since
/// `previous`.
pub async fn sample(
    client: &Client,
    target: &str,
    source: &str,
    previous: State,
) -> Result<State, PgError> {
    if previous == State::Off {
        return Ok(State::Off);
    }
    let now: String = client
        .query_one(QUERY, &[])
        .await
        .map_err(|e| PgError::query(target, &e))?
        .get(0);
    if previous == State::Written(now.clone()) || (now.is_empty() && previous == State::Unknown) {
        return Ok(State::Written(now));
    }
    match client
        .execute(
            "SELECT pg_logical_emit_message(true, $1, $2)",
            &[&PREFIX, &now],
        )
        .await
    {
        Ok(_) => Ok(State::Written(now)),
        Err(e)
            if e.as_db_error().is_some_and(|d| {
                let code = d.code().code();
                code == "25006" || code == "42501"
            }) =>
        {
            tracing::warn!(
                source,
                error = %db_error(&e),
                "cannot write sequence values into the source's WAL: a restore will set sequences from the base image and raise them to the values their columns hold"
            );
            Ok(State::Off)
        }
        Err(e) => Err(PgError::query(target, &e)),
    }
}

/// The statements that set the sequences a message names (skipping any that does
/// not exist where it is replayed).
pub fn statement_from_message(content: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for line in content.lines().filter(|l| !l.is_empty()) {
        let (name, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("sequence message line without a value: {line:?}"))?;
        let value: i64 = value
            .parse()
            .map_err(|_| format!("sequence message value is not a number: {line:?}"))?;
        let name = quote_literal(name);
        out.push(format!(
            "SELECT pg_catalog.setval(to_regclass({name}), {value}, true) WHERE to_regclass({name}) IS NOT NULL"
        ));
    }
    Ok(out.join(";\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_becomes_setvals_that_skip_missing_sequences() {
        let sql = statement_from_message("public.s 42\n\"Odd \"\"q\"\" \".\"x y\" -7\n").unwrap();
        assert_eq!(
            sql,
            "SELECT pg_catalog.setval(to_regclass('public.s'), 42, true) WHERE to_regclass('public.s') IS NOT NULL;\n\
             SELECT pg_catalog.setval(to_regclass('\"Odd \"\"q\"\" \".\"x y\"'), -7, true) WHERE to_regclass('\"Odd \"\"q\"\" \".\"x y\"') IS NOT NULL"
        );
        assert!(statement_from_message("public.s x").is_err());
        assert_eq!(statement_from_message("").unwrap(), "");
    }
}
