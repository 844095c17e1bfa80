//! Group commit: appends of several sources share one synced write.
//!
//! An append that finds no write in flight becomes the **leader**: it writes its
//! batch (fsync with `sync = "always"`) with the writer lock released. Appends that
//! arrive meanwhile are **gathered** into one pending batch under the lock: their
//! sequence numbers and counters are assigned at once, in arrival order, and they
//! wait. When the leader's write returns it writes the gathered batch for them,
//! and so on until nothing is pending. So N busy sources pay about one fsync per
//! round, not N.
//!
//! # Guarantees
//! - **Order and atomicity.** One write is in flight at a time; each is one RocksDB
//!   write batch holding whole appends, written in sequence order. After a crash
//!   the journal holds a prefix of the groups: sequence numbers stay gapless.
//! - **Durable before acknowledged.** An append returns `Ok` only after the write
//!   holding it returned; readers see a group's events and counters only then.
//! - **Failure.** A failed write fails its appends and every append gathered after
//!   it (they were numbered after it); the writer state is rolled back to before
//!   the failed group, so the next append reuses those sequence numbers.
//! - Writes that carry counters outside an append (image seals, retention) wait
//!   until no group is in flight ([`Journal::lock_for_write`]).

use std::collections::{HashMap, VecDeque};

use rocksdb::WriteBatch;

use super::{Appended, ChangeEvent, Journal, JournalError, Progress, SourceId, SourceInfo};

/// Failures remembered for appends still waiting to hear about them.
const FAILURES_KEPT: usize = 64;

/// The group commit's part of the writer state.
#[derive(Default)]
pub(super) struct CommitState {
    /// A leader is writing (the lock is released meanwhile).
    pub writing: bool,
    /// Appends gathered while a write is in flight.
    gathering: Option<Group>,
    /// Id of the next group.
    next_group: u64,
    /// Every group up to this id is durable.
    durable_group: u64,
    /// Recent failures: the group ids `first..=last` failed with this message.
    failed: VecDeque<(u64, u64, String)>,
    /// Appends and writes so far (their ratio is what grouping saved).
    appends: u64,
    writes: u64,
}

/// Appends written together.
struct Group {
    id: u64,
    wb: WriteBatch,
    /// Each member source's state before the group: restored if the write fails.
    before: HashMap<SourceId, SourceInfo>,
    next_seq_before: u64,
    /// Each member source's state after the group: published once it is durable.
    after: HashMap<SourceId, SourceInfo>,
    next_seq_after: u64,
}

impl Journal {
    /// Appends through the group commit (see the module docs).
    pub(super) fn append_grouped(
        &self,
        src: SourceId,
        events: &[ChangeEvent],
        progress: &Progress,
    ) -> Result<Appended, JournalError> {
        if self.read_only {
            return Err(JournalError::ReadOnly(self.path.clone()));
        }
        let mut st = self.lock();
        let first_seq = st.next_seq;
        let info = st.sources.get(&src).cloned().ok_or_else(|| {
            JournalError::Storage(format!("append to unregistered source id {src}"))
        })?;
        let leader = !st.commit.writing;
        let mut group = match st.commit.gathering.take() {
            Some(g) => g,
            None => {
                let id = st.commit.next_group + 1;
                st.commit.next_group = id;
                Group {
                    id,
                    wb: WriteBatch::default(),
                    before: HashMap::new(),
                    next_seq_before: st.next_seq,
                    after: HashMap::new(),
                    next_seq_after: st.next_seq,
                }
            }
        };
        let next_image = st.next_image;
        // `build` validates before it puts anything, so an error leaves the group's
        // batch as it was.
        let built = self.build(
            &info,
            first_seq,
            events,
            progress,
            &mut group.wb,
            None,
            next_image,
        );
        let (stats, count) = match built {
            Ok(b) => b,
            Err(e) => {
                if !leader {
                    st.commit.gathering = Some(group);
                }
                return Err(e);
            }
        };
        group.before.entry(src).or_insert_with(|| info.clone());
        st.next_seq += count;
        let mut now = info;
        now.stats = stats;
        st.sources.insert(src, now.clone());
        group.after.insert(src, now);
        group.next_seq_after = st.next_seq;
        let appended = Appended { first_seq, count };
        st.commit.appends += 1;
        let mine = group.id;
        if !leader {
            st.commit.gathering = Some(group);
            loop {
                st = self.committed.wait(st).unwrap_or_else(|p| p.into_inner());
                if let Some((.., why)) = st
                    .commit
                    .failed
                    .iter()
                    .find(|(a, b, _)| (*a..=*b).contains(&mine))
                {
                    return Err(JournalError::Storage(why.clone()));
                }
                if st.commit.durable_group >= mine {
                    return Ok(appended);
                }
            }
        }
        st.commit.writing = true;
        let mut result = Ok(appended);
        loop {
            let wb = std::mem::take(&mut group.wb);
            st.commit.writes += 1;
            drop(st);
            let written = self.write(wb);
            st = self.lock();
            match written {
                Ok(()) => {
                    st.commit.durable_group = group.id;
                    self.publish_group(&group);
                }
                Err(e) => {
                    let message = e.to_string();
                    // Roll back to before this group: its members and every append
                    // gathered after it fail.
                    st.next_seq = group.next_seq_before;
                    let mut last = group.id;
                    if let Some(next) = st.commit.gathering.take() {
                        last = next.id;
                        for (id, info) in next.before {
                            if !group.before.contains_key(&id) {
                                st.sources.insert(id, info);
                            }
                        }
                    }
                    for (id, info) in std::mem::take(&mut group.before) {
                        st.sources.insert(id, info);
                    }
                    st.commit.failed.push_back((group.id, last, message));
                    if st.commit.failed.len() > FAILURES_KEPT {
                        st.commit.failed.pop_front();
                    }
                    if group.id == mine {
                        result = Err(e);
                    }
                    break;
                }
            }
            self.committed.notify_all();
            match st.commit.gathering.take() {
                Some(next) => group = next,
                None => break,
            }
        }
        st.commit.writing = false;
        drop(st);
        self.committed.notify_all();
        result
    }

    /// Appends made through the group commit, and the writes that carried them.
    pub fn group_commit_counts(&self) -> (u64, u64) {
        let st = self.lock();
        (st.commit.appends, st.commit.writes)
    }

    /// Publishes a durable group's counters to readers.
    fn publish_group(&self, group: &Group) {
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        view.next_seq = view.next_seq.max(group.next_seq_after);
        for (id, info) in &group.after {
            view.sources.insert(*id, info.clone());
        }
    }
}
