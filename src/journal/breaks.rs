//! Breaks in a source's history: where one history ended (its slot was lost, say)
//! and a new one began from a new base image. Restores on either side are exact; a
//! restore whose replay would cross a break is refused, and nothing is ever joined
//! across one. Kept as a note of the source (a JSON list), written durably.

use serde::{Deserialize, Serialize};

use super::{Journal, JournalError, SourceId};

/// The note holding a source's breaks.
const NOTE: &str = "history.breaks";
/// The note `tidemark resync` leaves (its value: why): the source's capture starts a
/// new history on its next start, and empties the note once that history's base
/// image is sealed.
pub const RESYNC_NOTE: &str = "history.resync";

/// One break.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Break {
    /// The old history's coverage when it ended (µs since the Unix epoch): restores
    /// up to here use the old history.
    pub covered_until_us: i64,
    /// When the new history began (µs): its first base image is at or after this.
    pub new_history_from_us: i64,
    /// Why, for `status` and refusals.
    pub reason: String,
}

impl Journal {
    /// The breaks in `src`'s history, oldest first.
    pub fn breaks(&self, src: SourceId) -> Result<Vec<Break>, JournalError> {
        match self.note(src, NOTE)? {
            Some(text) if !text.is_empty() => {
                serde_json::from_str(&text).map_err(|e| JournalError::Corrupt {
                    record: format!("state/note/{src}/{NOTE}"),
                    detail: e.to_string(),
                })
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Durably records a break in `src`'s history (once: a break that ends the old
    /// history at the same coverage as the last one is the same break, retried).
    pub fn add_break(&self, src: SourceId, b: Break) -> Result<(), JournalError> {
        let mut all = self.breaks(src)?;
        if all
            .last()
            .is_some_and(|l| l.covered_until_us == b.covered_until_us)
        {
            return Ok(());
        }
        all.push(b);
        let text = serde_json::to_string(&all)
            .map_err(|e| JournalError::Storage(format!("cannot encode breaks: {e}")))?;
        self.set_note(src, NOTE, &text)
    }
}
