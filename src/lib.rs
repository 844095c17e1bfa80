//! tidemark: continuous data protection for cloud-native applications.
//!
//! The data path, and the modules that follow it:
//! - [`capture`]: sources tail PostgreSQL, Redis, Kafka, MongoDB and Kubernetes;
//! - [`journal`]: one append-only, indexed, checksummed log of every source's
//!   [`event`]s at their source [`position`]s, with base images;
//! - [`restore`]: plans (and, per kind, performs) a restore to any moment in [`time`].
//!
//! [`config`] reads the one configuration file; [`cli`] is the command line.

pub mod capture;
pub mod cli;
pub mod config;
pub mod digest;
pub mod event;
pub mod journal;
pub mod kafka;
pub mod position;
pub mod restore;
pub mod sandbox;
pub mod time;
