//! The command line. Subcommand names and flags are a contract: scripts and other
//! parts of tidemark depend on them. One file per subcommand.

mod demo;
mod digest;
mod log;
mod prune;
mod restore;
mod run;
mod status;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::journal::{Journal, JournalOptions};
use crate::time::{TimeSpec, Timestamp};

/// tidemark: continuous data protection for cloud-native applications.
#[derive(Debug, Parser)]
#[command(name = "tidemark", version, about)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(short = 'c', long = "config", global = true, env = "TIDEMARK_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture every configured source into the journal until SIGINT/SIGTERM.
    Run,
    /// Per-source position, coverage and counts.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print journal events.
    Log {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// From this time (RFC 3339, -5m, latest).
        #[arg(long)]
        since: Option<String>,
        /// Up to this time.
        #[arg(long)]
        until: Option<String>,
        /// At most this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Restore a source to a moment into a target.
    Restore {
        /// The source to restore.
        #[arg(long)]
        source: String,
        /// The moment (RFC 3339, -5m, latest).
        #[arg(long)]
        at: String,
        /// Where to restore to (a URL of the source's kind).
        #[arg(long)]
        target: String,
        /// Print the plan and touch nothing.
        #[arg(long)]
        dry_run: bool,
        /// Restore into a target that already holds data.
        #[arg(long)]
        force: bool,
        /// Kafka: restore source topics under other names, `a=b,c=d`.
        #[arg(long)]
        topic_map: Option<String>,
    },
    /// Print an order-independent digest of a live source (`postgres://...`,
    /// `redis://...`, `kafka://host:port`) to compare a restore with its source. Needs no
    /// configuration file.
    Digest {
        /// What to digest; the scheme selects the kind.
        url: String,
        /// Kafka: only these topics (names or ^regex), comma-separated.
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the whole story on a throwaway PostgreSQL: capture a pgbench workload,
    /// restore a moment from the middle into a new database, prove it equal.
    Demo {
        /// Seconds of workload before and after the chosen moment.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Apply the configured retention now.
    Prune {
        /// Report what would be dropped; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Configuration commands.
    Config {
        /// What to do with the configuration.
        #[command(subcommand)]
        action: ConfigAction,
    },
}

/// `tidemark config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Check the configuration without connecting to anything.
    Validate,
}

/// Logs to stderr; `RUST_LOG` overrides the default `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a parsed command line.
pub fn execute(cli: Cli) -> Result<()> {
    // Commands that need no configuration file.
    match &cli.command {
        Command::Digest { url, topics, json } => return digest::digest(url, topics, *json),
        Command::Demo { seconds } => return demo::demo(*seconds),
        _ => {}
    }
    let path = cli
        .config
        .clone()
        .context("no configuration file: pass -c FILE (or set TIDEMARK_CONFIG)")?;
    let cfg = Config::load(&path)?;
    match cli.command {
        Command::Config {
            action: ConfigAction::Validate,
        } => {
            println!(
                "{}: ok ({} sources, journal at {})",
                path.display(),
                cfg.sources.len(),
                cfg.journal.path.display()
            );
            Ok(())
        }
        Command::Run => run::run(&cfg),
        Command::Status { json } => status::status(&cfg, json),
        Command::Log {
            source,
            since,
            until,
            limit,
            json,
        } => log::log(
            &cfg,
            source.as_deref(),
            since.as_deref(),
            until.as_deref(),
            limit,
            json,
        ),
        Command::Restore {
            source,
            at,
            target,
            dry_run,
            force,
            topic_map,
        } => restore::restore(
            &cfg,
            &source,
            &at,
            &target,
            restore::Flags {
                dry_run,
                force,
                topic_map,
            },
        ),
        Command::Prune { dry_run } => prune::prune(&cfg, dry_run),
        Command::Digest { .. } | Command::Demo { .. } => Ok(()), // handled above, without a configuration
    }
}

/// Opens the configured journal read-only (never creates or locks it).
fn open_read_only(cfg: &Config) -> Result<Journal> {
    Ok(Journal::open_read_only(&cfg.journal.path)?)
}

/// Opens the configured journal for writing.
fn open_for_write(cfg: &Config) -> Result<Journal> {
    Ok(Journal::open(
        journal_path(cfg),
        JournalOptions {
            sync: cfg.journal.sync,
            compression: cfg.journal.compression,
        },
    )?)
}

fn journal_path(cfg: &Config) -> &Path {
    &cfg.journal.path
}

/// Parses a time argument; `flag` names it in the error.
fn parse_time(flag: &str, value: &str) -> Result<TimeSpec> {
    TimeSpec::parse(value, Timestamp::now()).with_context(|| format!("--{flag}"))
}

/// Formats optional microseconds as RFC 3339 or `-`.
fn fmt_time(us: Option<i64>) -> String {
    us.map(|t| Timestamp::from_micros(t).to_rfc3339())
        .unwrap_or_else(|| "-".into())
}
