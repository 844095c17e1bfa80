//! Applications: several sources recovered as one, at one moment.
//!
//! An application ([`crate::config::Application`]) names its sources and the
//! target profiles it restores into. Its unit of recovery is a **cut**: for each
//! source, the journal position that is its state at one instant T of tidemark's
//! clock. The cut is *crash-consistent*: as if every service of the application
//! stopped at T.
//!
//! - [`marker`]: a recovery point writes a marker into every source's own log
//!   (without pausing writers) and times each write; the marker's place in each
//!   source's journal, against the write's round trip, measures how that source's
//!   journal time relates to tidemark's clock (its clock offset, or its capture
//!   lag where the journal times events on arrival) and the uncertainty.
//! - [`point`]: recovery points as stored (one immutable JSON file each, beside
//!   the journal), and the cut of any moment (marked or not) from them.
//! - [`restore`]: every source of an application restored to one cut, data
//!   sources in parallel, each proved by its digest.

pub mod diff;
pub mod diff_kube;
pub mod history;
pub mod marker;
pub mod point;
pub mod rehearse;
pub mod restore;
