//! Scrubbing: read every record back and check it against the others, reporting
//! all damage found (not only the first) with what it makes unrestorable.
//!
//! Checks, per column family: every event's checksum and key; every batch entry's
//! checksum and that its events are there; every position-index entry against the
//! event it points at (same source, same position key, inside its batch); every
//! time-index entry against its event's time; every image's metadata checksum, its
//! chunks (count, bytes, each checksum); the state records' checksums. A pruned
//! source's dropped range is not damage.

use rocksdb::{IteratorMode, ReadOptions};

use super::{keys, read, record, Journal, JournalError, SourceId};
use crate::event::{BaseImageMeta, ChangeEvent};
use crate::time::Timestamp;

/// One damaged record and what it costs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Damage {
    /// The source affected, if one is.
    pub source: Option<String>,
    /// The record (column family and key) and what is wrong with it.
    pub record: String,
    /// Which restores can no longer be done (or trusted).
    pub affects: String,
}

/// What a scrub read and found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScrubReport {
    /// Events read.
    pub events: u64,
    /// Index entries (batches, positions, times) checked.
    pub index_entries: u64,
    /// Images checked.
    pub images: u64,
    /// Image chunks read.
    pub chunks: u64,
    /// Everything damaged.
    pub damage: Vec<Damage>,
}

impl Journal {
    /// Reads the whole journal back and checks it (see the module docs). Storage
    /// errors that stop a column family's scan are reported as damage too.
    pub fn scrub(&self) -> Result<ScrubReport, JournalError> {
        let mut r = ScrubReport::default();
        let names: std::collections::HashMap<SourceId, String> =
            self.sources().into_iter().map(|s| (s.id, s.name)).collect();
        let name = |src: SourceId| names.get(&src).cloned();
        // Events: checksum and decodability; each source's lowest sequence kept.
        let mut lowest: std::collections::HashMap<SourceId, u64> = Default::default();
        let mut it = self.db.raw_iterator_cf(self.cf(keys::CF_EVENTS));
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let (src, seq) = (
                keys::be_u32(k, 0).unwrap_or(0),
                keys::be_u64(k, 4).unwrap_or(0),
            );
            r.events += 1;
            lowest.entry(src).or_insert(seq);
            let decoded: Result<ChangeEvent, _> =
                record::open_msg(v, &|| format!("events/{src}:{seq}"));
            if let Err(e) = decoded {
                r.damage
                    .push(self.event_damage(src, name(src), seq, &e.to_string())?);
            }
            it.next();
        }
        if let Err(e) = it.status() {
            r.damage.push(storage("events", e.as_ref()));
        }
        let floors: std::collections::HashSet<SourceId> = self
            .sources()
            .into_iter()
            .filter(|s| s.stats.floor_us.is_some())
            .map(|s| s.id)
            .collect();
        // Retention dropped everything of a pruned source below its lowest event.
        let pruned = |src: SourceId, seq: u64| {
            floors.contains(&src) && lowest.get(&src).is_none_or(|low| seq < *low)
        };
        // An event by key: absent, damaged (`Some(None)`, reported above), or read.
        let present = |src: SourceId, seq: u64| -> Option<Option<ChangeEvent>> {
            let v = self
                .db
                .get_cf(self.cf(keys::CF_EVENTS), keys::event(src, seq))
                .ok()??;
            Some(record::open_msg(&v, &|| String::new()).ok())
        };
        // Batches.
        for item in self
            .db
            .iterator_cf(self.cf(keys::CF_BATCHES), IteratorMode::Start)
        {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    r.damage.push(storage("batches", e.as_ref()));
                    break;
                }
            };
            r.index_entries += 1;
            let first = keys::be_u64(&k, 0).unwrap_or(0);
            match read::decode_batch(&k, &v) {
                Ok((src, last)) => {
                    let n = self.count_events(src, first, last)?;
                    let missing = (n != last - first + 1)
                        .then(|| (first..=last).find(|q| present(src, *q).is_none()))
                        .flatten();
                    if let Some(q) = missing.filter(|q| !pruned(src, *q)) {
                        r.damage.push(Damage {
                            source: name(src),
                            record: format!("batches/{first}: event {q} of the batch {first}..={last} is missing"),
                            affects: self.affects(src, name(src), q)?,
                        });
                    }
                }
                Err(e) => r.damage.push(Damage {
                    source: None,
                    record: format!("batches/{first}: {e}"),
                    affects: "reading the journal by sequence (`tidemark log`) past this batch; restores do not use this index".into(),
                }),
            }
        }
        // Position index.
        let mut it = self.db.raw_iterator_cf(self.cf(keys::CF_POS));
        it.seek_to_first();
        let mut probe = Vec::with_capacity(64);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            r.index_entries += 1;
            let src = keys::be_u32(k, 0).unwrap_or(0);
            let problem = match read::decode_pos_entry(v) {
                None => Some("malformed value".to_string()),
                Some((first, last)) if first > last => {
                    Some(format!("range {first}..={last} is reversed"))
                }
                Some((first, last)) => match present(src, first) {
                    None if pruned(src, first) => None,
                    None => Some(format!("points at event {first}, which is not there")),
                    Some(None) => None, // the event's own damage is reported
                    Some(Some(e)) => {
                        probe.clear();
                        probe.extend_from_slice(&src.to_be_bytes());
                        let same = e
                            .position
                            .as_ref()
                            .and_then(|p| p.write_index_key(&mut probe))
                            .is_some()
                            && probe[..] == k[..];
                        let batch_last = self.batch_last(first)?;
                        if !same {
                            Some(format!("names a position that event {first} does not have"))
                        } else if batch_last != Some(last) {
                            Some(format!("says its batch ends at {last}, the batch index says {batch_last:?}"))
                        } else {
                            None
                        }
                    }
                },
            };
            if let Some(p) = problem {
                r.damage.push(Damage {
                    source: name(src),
                    record: format!("by_position/{src}:{}: {p}", crate::digest::hex(&k[4..])),
                    affects: "finding events by source position (resuming capture, placing scheduled images); restores by time do not use it: rebuild by re-capturing if it spreads".into(),
                });
            }
            it.next();
        }
        if let Err(e) = it.status() {
            r.damage.push(storage("by_position", e.as_ref()));
        }
        // Time index.
        let mut it = self.db.raw_iterator_cf(self.cf(keys::CF_TIME));
        it.seek_to_first();
        while let Some(k) = it.key() {
            r.index_entries += 1;
            let src = keys::be_u32(k, 0).unwrap_or(0);
            let t = keys::be_u64(k, 4)
                .map(|u| (u ^ (1 << 63)) as i64)
                .unwrap_or(0);
            let seq = keys::be_u64(k, 12).unwrap_or(0);
            let problem = match present(src, seq) {
                None if pruned(src, seq) => None,
                None => Some(format!("points at event {seq}, which is not there")),
                Some(None) => None,
                Some(Some(e)) if e.time_us() != t => Some(format!(
                    "says event {seq} is at {}, the event says {}",
                    Timestamp::from_micros(t),
                    Timestamp::from_micros(e.time_us())
                )),
                Some(Some(_)) => None,
            };
            if let Some(p) = problem {
                r.damage.push(Damage {
                    source: name(src),
                    record: format!("by_time/{src}:{seq}: {p}"),
                    affects: format!(
                        "restores of `{}` to a moment near {}: the cut of the replay by time is wrong there",
                        name(src).unwrap_or_default(),
                        Timestamp::from_micros(t)
                    ),
                });
            }
            it.next();
        }
        if let Err(e) = it.status() {
            r.damage.push(storage("by_time", e.as_ref()));
        }
        // Images and their chunks.
        for item in self
            .db
            .iterator_cf(self.cf(keys::CF_IMAGES), IteratorMode::Start)
        {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    r.damage.push(storage("images", e.as_ref()));
                    break;
                }
            };
            let src = keys::be_u32(&k, 0).unwrap_or(0);
            let id = keys::be_u64(&k, 4).unwrap_or(0);
            r.images += 1;
            let meta: BaseImageMeta = match record::open_msg(&v, &|| format!("images/{src}:{id}")) {
                Ok(m) => m,
                Err(e) => {
                    r.damage.push(Damage {
                        source: name(src),
                        record: e.to_string(),
                        affects: format!("base image #{id}: restores that would start from it"),
                    });
                    continue;
                }
            };
            if let Some(d) = self.check_chunks(&meta, &mut r.chunks) {
                r.damage.push(Damage {
                    source: name(src),
                    record: d,
                    affects: format!(
                        "restores of `{}` that start from base image #{id} (moments from {} until the next image; an older image, if kept, still serves them by replaying further)",
                        name(src).unwrap_or_default(),
                        Timestamp::from_micros(meta.time_us)
                    ),
                });
            }
        }
        // State: checkpoints, counters, notes.
        for item in self
            .db
            .iterator_cf(self.cf(keys::CF_STATE), IteratorMode::Start)
        {
            match item {
                Ok((k, v)) => {
                    // Health and supervision reports are plain JSON, rewritten often.
                    if matches!(k.first(), Some(b'c' | b's' | b'n')) {
                        if let Err(e) =
                            record::open(&v, &|| format!("state/{}", crate::digest::hex(&k)))
                        {
                            let src = keys::be_u32(&k, 1).unwrap_or(0);
                            r.damage.push(Damage {
                                source: name(src),
                                record: e.to_string(),
                                affects: "resuming capture of the source (its checkpoint or counters); stop `run` and restore the journal from a copy".into(),
                            });
                        }
                    }
                }
                Err(e) => {
                    r.damage.push(storage("state", e.as_ref()));
                    break;
                }
            }
        }
        Ok(r)
    }

    /// The batch index's last sequence of the batch holding `seq`.
    fn batch_last(&self, seq: u64) -> Result<Option<u64>, JournalError> {
        let mut it = self.db.raw_iterator_cf(self.cf(keys::CF_BATCHES));
        it.seek_for_prev(seq.to_be_bytes());
        let last = match (it.key(), it.value()) {
            (Some(k), Some(v)) => read::decode_batch(k, v).ok().map(|(_, l)| l),
            _ => None,
        };
        it.status()?;
        Ok(last.filter(|l| *l >= seq))
    }

    /// Reads every chunk of `meta`; the first problem found, if any.
    fn check_chunks(&self, meta: &BaseImageMeta, read: &mut u64) -> Option<String> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::chunk(meta.id + 1, 0).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(keys::CF_CHUNKS), ro);
        it.seek(keys::chunk(meta.id, 0));
        let (mut n, mut bytes) = (0u64, 0u64);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if keys::be_u64(k, 8) != Some(n) {
                return Some(format!("image_chunks/{}:{n}: chunk missing", meta.id));
            }
            match record::open(v, &|| format!("image_chunks/{}:{n}", meta.id)) {
                Ok(p) => bytes += p.len() as u64,
                Err(e) => return Some(e.to_string()),
            }
            *read += 1;
            n += 1;
            it.next();
        }
        if let Err(e) = it.status() {
            return Some(format!("image_chunks/{}: {e}", meta.id));
        }
        if n != meta.chunks || bytes != meta.bytes {
            return Some(format!(
                "images/{}: metadata says {} chunks and {} bytes, the journal holds {n} chunks and {bytes} bytes",
                meta.id, meta.chunks, meta.bytes
            ));
        }
        None
    }

    fn event_damage(
        &self,
        src: SourceId,
        name: Option<String>,
        seq: u64,
        detail: &str,
    ) -> Result<Damage, JournalError> {
        Ok(Damage {
            source: name.clone(),
            record: detail.to_string(),
            affects: self.affects(src, name, seq)?,
        })
    }

    /// Which restores a lost event `seq` of `src` breaks: every moment from the
    /// last intact event before it until the first image after it.
    fn affects(
        &self,
        src: SourceId,
        name: Option<String>,
        seq: u64,
    ) -> Result<String, JournalError> {
        let name = name.unwrap_or_else(|| format!("#{src}"));
        let from = match self.last_seq_below(src, seq)? {
            Some(prev) => self
                .watermark_at(src, prev)?
                .map(|t| Timestamp::from_micros(t).to_string())
                .unwrap_or_else(|| "its start".into()),
            None => "its start".into(),
        };
        let next_image = self.images(src)?.into_iter().find(|m| m.after_seq >= seq);
        Ok(match next_image {
            Some(m) => format!(
                "restores of `{name}` to moments after {from} and before {} (base image #{}, from which restores are exact again)",
                Timestamp::from_micros(m.time_us),
                m.id
            ),
            None => format!("every restore of `{name}` to a moment after {from}"),
        })
    }
}

fn storage(cf: &str, detail: &str) -> Damage {
    Damage {
        source: None,
        record: format!("{cf}: the storage layer reports {detail}"),
        affects: format!("everything in `{cf}` past the damaged block: the scan stopped there"),
    }
}

/// A stored record, by role, for [`flip_byte_for_test`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum TestRecord {
    /// The event of a source at a sequence number.
    Event(SourceId, u64),
    /// The `n`th position-index entry of a source.
    PositionEntry(SourceId, usize),
    /// Chunk `n` of an image.
    Chunk(u64, u64),
}

/// Overwrites a stored value with one byte flipped (tests of the scrub only): the
/// damage a disk or memory error leaves that storage checksums did not catch.
#[doc(hidden)]
pub fn flip_byte_for_test(
    journal: &Journal,
    record: TestRecord,
    at: usize,
) -> Result<(), JournalError> {
    let (cf, key) = match record {
        TestRecord::Event(src, seq) => (keys::CF_EVENTS, keys::event(src, seq).to_vec()),
        TestRecord::Chunk(image, n) => (keys::CF_CHUNKS, keys::chunk(image, n).to_vec()),
        TestRecord::PositionEntry(src, n) => {
            let mut ro = ReadOptions::default();
            ro.set_iterate_upper_bound(keys::source_end(src).to_vec());
            let mut it = journal.db.raw_iterator_cf_opt(journal.cf(keys::CF_POS), ro);
            it.seek(src.to_be_bytes());
            for _ in 0..n {
                it.next();
            }
            let key = it.key().map(<[u8]>::to_vec);
            it.status()?;
            let key = key.ok_or_else(|| JournalError::Storage("no such index entry".into()))?;
            (keys::CF_POS, key)
        }
    };
    let cf = journal.cf(cf);
    let Some(mut v) = journal.db.get_cf(cf, &key)? else {
        return Err(JournalError::Storage("no such record".into()));
    };
    let i = at.min(v.len().saturating_sub(1));
    v[i] ^= 0x20;
    journal.db.put_cf(cf, key, v)?;
    Ok(())
}
