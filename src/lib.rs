//! tidemark: continuous data protection for cloud-native applications.
//!
//! The data path, and the modules that follow it:
//! - [`connectors`]: one folder per kind of source (client, capture, restore target,
//!   digest, config section), reached through one registry;
//! - [`capture`]: the source contract and the per-source supervisor;
//! - [`journal`]: one append-only, indexed, checksummed log of every source's
//!   [`event`]s at their source [`position`]s, with base images;
//! - [`restore`]: plans (and, per kind, performs) a restore to any moment in [`time`].
//!
//! [`config`] reads the one configuration file; [`cli`] is the command line.

pub mod app;
pub mod capture;
pub mod cli;
pub mod config;
pub mod connectors;
pub mod crypto;
pub mod digest;
pub mod event;
pub mod journal;
pub mod position;
pub mod redact;
pub mod restore;
pub mod sandbox;
pub mod time;

/// Every binary built on the library (the CLI, tests, benchmarks) allocates with
/// mimalloc: restores and capture make many small, short-lived allocations
/// (decoded events, row values), where glibc's allocator spent up to 40% of a
/// net-effect restore's scanning thread in `malloc` and `malloc_consolidate`
/// (see ARCHITECTURE.md, "Build").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
