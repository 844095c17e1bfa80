//! The command line. Subcommand names and flags are a contract: scripts and other
//! parts of tidemark depend on them. One file per subcommand.

mod app;
mod demo;
mod digest;
mod image;
mod log;
mod prune;
mod restore;
mod run;
mod status;
mod verify;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::Config;
use crate::connectors::{self, KindOptions, OptionFor};
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
    /// Capture every configured source into the journal until SIGINT/SIGTERM. Each
    /// source is supervised on its own: one failing source does not stop the others.
    Run {
        /// Stop every source (and exit non-zero) as soon as one fails permanently.
        #[arg(long)]
        fail_fast: bool,
        /// Take over replication slots this journal did not create (their previous
        /// owner's history ends there). Only when that owner is gone for good.
        #[arg(long)]
        take_over_slots: bool,
    },
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
        #[arg(long, allow_hyphen_values = true)]
        since: Option<String>,
        /// Up to this time.
        #[arg(long, allow_hyphen_values = true)]
        until: Option<String>,
        /// At most this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Restore a source (`--source S --target URL`) or a whole application
    /// (`--app A --profile P`) to a moment (`--at`) or recovery point (`--point`).
    Restore {
        /// The source to restore.
        #[arg(long, conflicts_with = "app", required_unless_present = "app")]
        source: Option<String>,
        /// The application to restore: every one of its sources to one cut.
        #[arg(long, requires = "profile")]
        app: Option<String>,
        /// The application's target profile (`[application.profile.NAME]`).
        #[arg(long, requires = "app")]
        profile: Option<String>,
        /// The moment (RFC 3339, -5m, latest).
        #[arg(long, allow_hyphen_values = true, required_unless_present = "point")]
        at: Option<String>,
        /// A recovery point of the application (its id or label).
        #[arg(long, requires = "app", conflicts_with = "at")]
        point: Option<String>,
        /// Where to restore to (a URL of the source's kind).
        #[arg(long, required_unless_present = "app", conflicts_with = "app")]
        target: Option<String>,
        /// Print the plan and touch nothing.
        #[arg(long)]
        dry_run: bool,
        /// Restore into a target that already holds data (what it does to that data
        /// depends on the kind; the refusal without it says).
        #[arg(long)]
        force: bool,
        /// Allow a target that is one of the configured sources' own databases
        /// (rolls the live database back and breaks its capture).
        #[arg(long)]
        into_live_source: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print an order-independent digest of a live source (`postgres://...`,
    /// `redis://...`, `kafka://host:port`) to compare a restore with its source. Needs no
    /// configuration file.
    Digest {
        /// What to digest; the scheme selects the kind.
        url: String,
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
    /// End a source's history with a break and start a new one (a new replication
    /// slot and base image) at its next `run`: after its slot or publication was lost.
    /// Restores before the break stay exact; none crosses it.
    Resync {
        /// The configured source.
        source: String,
    },
    /// Base images: `image take SOURCE` asks the running capture for one now.
    Image {
        /// What to do.
        #[command(subcommand)]
        action: ImageAction,
    },
    /// Scrub the journal: every record's checksum, the indexes against the events,
    /// every image's chunks against its metadata. Exits non-zero on any damage,
    /// naming the sources and moments that can no longer be restored.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recovery points of an application: one cut across all of its sources.
    Point {
        /// What to do.
        #[command(subcommand)]
        action: PointAction,
    },
    /// Restore an application into a sandbox profile, run its checks (`checks` in
    /// its config, given each target's URL as TIDEMARK_TARGET_<SOURCE>), record the
    /// result, and tear the sandbox down unless --keep.
    Rehearse {
        /// The application.
        #[arg(long)]
        app: String,
        /// The sandbox profile.
        #[arg(long)]
        profile: String,
        /// The moment (default: latest).
        #[arg(long, allow_hyphen_values = true, conflicts_with = "point")]
        at: Option<String>,
        /// A recovery point (id or label).
        #[arg(long)]
        point: Option<String>,
        /// Leave the restored sandbox in place.
        #[arg(long)]
        keep: bool,
        /// Print the record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What changed between two moments, per source, from the journal alone:
    /// rows per table, keys per Redis database and type, records per partition
    /// and group offset moves, documents per collection, Kubernetes objects.
    Diff {
        /// Every source of this application, each cut as a restore cuts it.
        #[arg(long, conflicts_with = "source", required_unless_present = "source")]
        app: Option<String>,
        /// One source.
        #[arg(long)]
        source: Option<String>,
        /// The first moment (RFC 3339, -5m; with --app also a point's id or label).
        #[arg(long, allow_hyphen_values = true)]
        from: String,
        /// The second moment (or `latest`).
        #[arg(long, allow_hyphen_values = true)]
        to: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every version of one row (primary key, composite as `a,b`), Redis key,
    /// record key, document `_id` or Kubernetes `namespace/name`, from the journal.
    History {
        /// The source.
        #[arg(long)]
        source: String,
        /// The key.
        #[arg(long)]
        key: String,
        /// Only in a table, database or collection whose name contains this
        /// (`public.orders`, `db 0`, `Deployment`).
        #[arg(long = "in")]
        within: Option<String>,
        /// From this moment (default: the start of the journal).
        #[arg(long, allow_hyphen_values = true)]
        from: Option<String>,
        /// Up to this moment (default: latest).
        #[arg(long, allow_hyphen_values = true)]
        to: Option<String>,
        /// Scan the events instead of using the key index (a check of the index).
        #[arg(long)]
        scan: bool,
        /// Print the versions as JSON (how they were found: JSON on stderr).
        #[arg(long)]
        json: bool,
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

/// `tidemark image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageAction {
    /// Ask the running `tidemark run` for a base image of SOURCE now (taken while
    /// capture goes on, like a scheduled one).
    Take {
        /// The configured source.
        source: String,
        /// Wait until the image is sealed and print it.
        #[arg(long)]
        wait: bool,
    },
    /// List a source's base images.
    List {
        /// The source.
        source: String,
    },
}

/// `tidemark point ...`.
#[derive(Debug, Subcommand)]
pub enum PointAction {
    /// Write a marker into every source of APP (writers are not paused), wait
    /// until the running capture journaled each, and record the point.
    Create {
        /// The application.
        app: String,
        /// A label to find the point by.
        #[arg(long)]
        label: Option<String>,
        /// A command run before and after the markers (an application-consistent
        /// point: it can tell the application to flush, then to go on). It gets
        /// TIDEMARK_APPLICATION, TIDEMARK_POINT and TIDEMARK_HOOK_PHASE.
        #[arg(long)]
        hook: Option<String>,
        /// How long to wait for the capture to journal the markers.
        #[arg(long, default_value = "60s")]
        wait: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List APP's recovery points.
    List {
        /// The application.
        app: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the cut of a point (`--point`) or of any moment (`--at`): per source,
    /// where it is cut and its uncertainty.
    Show {
        /// The application.
        app: String,
        /// A point's id or label.
        #[arg(long, conflicts_with = "at", required_unless_present = "at")]
        point: Option<String>,
        /// Any moment (RFC 3339, -5m).
        #[arg(long, allow_hyphen_values = true)]
        at: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `tidemark config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Check the configuration without connecting to anything.
    Validate,
}

/// The command line with every connector's own options added to the commands
/// they belong to (`--topic-map` on `restore`, `--topics` on `digest`).
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    for c in connectors::registry() {
        for o in c.options() {
            let sub = match o.command {
                OptionFor::Restore => "restore",
                OptionFor::Digest => "digest",
            };
            cmd = cmd.mut_subcommand(sub, |s| {
                s.arg(
                    clap::Arg::new(o.name)
                        .long(o.name)
                        .value_name("VALUE")
                        .help(o.help),
                )
            });
        }
    }
    cmd
}

/// The kind-specific options given to `sub`.
fn kind_options(matches: &ArgMatches, sub: &str, command: OptionFor) -> KindOptions {
    let mut out = KindOptions::default();
    let Some(m) = matches.subcommand_matches(sub) else {
        return out;
    };
    for c in connectors::registry() {
        for o in c.options().iter().filter(|o| o.command == command) {
            if let Ok(Some(v)) = m.try_get_one::<String>(o.name) {
                out.0.insert(o.name.to_string(), v.clone());
            }
        }
    }
    out
}

/// Parses the process's arguments, runs them, and returns the exit code. Errors
/// print as one `error:` line.
pub fn main() -> std::process::ExitCode {
    let matches = command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    init_tracing();
    if matches!(
        cli.command,
        Command::Status { .. }
            | Command::Log { .. }
            | Command::Digest { .. }
            | Command::Config { .. }
            | Command::Point {
                action: PointAction::List { .. } | PointAction::Show { .. }
            }
            | Command::Diff { .. }
            | Command::History { .. }
            | Command::Image {
                action: ImageAction::List { .. }
            }
    ) {
        // Commands that only print: `tidemark status | head -1` ends quietly, as
        // other Unix tools do, instead of panicking on the closed pipe. (Not for
        // `run` and `restore`: their sockets must never raise SIGPIPE.)
        // SAFETY: setting a signal's disposition to the default is async-signal-safe
        // and done before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match execute(cli, &matches) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return std::process::ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Logs to stderr; `RUST_LOG` overrides the default `info`. Colour only when
/// stderr is a terminal (and `NO_COLOR` is unset).
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a parsed command line (`matches` carries the connectors' own options).
pub fn execute(cli: Cli, matches: &ArgMatches) -> Result<()> {
    // Commands that need no configuration file.
    match &cli.command {
        Command::Digest { url, json } => {
            // A configuration is optional here: given, its [timeouts] apply.
            let timeouts = match &cli.config {
                Some(path) => Config::load(path)?.timeouts,
                None => Default::default(),
            };
            let options = kind_options(matches, "digest", OptionFor::Digest);
            return digest::digest(url, &options, &timeouts, *json);
        }
        Command::Demo { seconds } => return demo::demo(*seconds),
        _ => {}
    }
    let path = cli
        .config
        .clone()
        .context("no configuration file: pass -c FILE (or set TIDEMARK_CONFIG)")?;
    let mut cfg = Config::load(&path)?;
    if matches!(
        cli.command,
        Command::Run { .. }
            | Command::Restore { .. }
            | Command::Resync { .. }
            | Command::Rehearse { .. }
    ) {
        // Sections whose members are on the server (databases = ["*"]).
        cfg.discover()?;
    }
    match cli.command {
        Command::Config {
            action: ConfigAction::Validate,
        } => {
            for a in &cfg.applications {
                for s in a.sources.iter().filter_map(|n| cfg.source(n)) {
                    if let Some(p) = s.settings.marker_problem() {
                        println!("note: application `{}`: source `{}` cannot take recovery-point markers ({p}); `point create` will refuse, restores by moment still work", a.name, s.name);
                    }
                }
            }
            println!(
                "{}: ok ({} sources, {} applications, journal at {})",
                path.display(),
                cfg.sources.len(),
                cfg.applications.len(),
                cfg.journal.path.display()
            );
            Ok(())
        }
        Command::Run {
            fail_fast,
            take_over_slots,
        } => run::run(
            &cfg,
            run::Flags {
                fail_fast,
                take_over_slots,
            },
        ),
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
            app: Some(app),
            profile,
            at,
            point,
            dry_run,
            json,
            ..
        } => app::restore(
            &cfg,
            &app,
            profile.as_deref().unwrap_or_default(),
            at.as_deref(),
            point.as_deref(),
            dry_run,
            json,
        ),
        Command::Restore {
            source,
            at,
            target,
            dry_run,
            force,
            into_live_source,
            json,
            ..
        } => restore::restore(
            &cfg,
            source.as_deref().unwrap_or_default(),
            at.as_deref().unwrap_or("latest"),
            target.as_deref().unwrap_or_default(),
            restore::Flags {
                dry_run,
                force,
                into_live_source,
                json,
                options: kind_options(matches, "restore", OptionFor::Restore),
            },
        ),
        Command::Prune { dry_run } => prune::prune(&cfg, dry_run),
        Command::Point { action } => app::point(&cfg, action),
        Command::Rehearse {
            app: a,
            profile,
            at,
            point,
            keep,
            json,
        } => app::rehearse(
            &cfg,
            &a,
            &profile,
            at.as_deref(),
            point.as_deref(),
            keep,
            json,
        ),
        Command::Diff {
            app: a,
            source,
            from,
            to,
            json,
        } => app::diff(&cfg, a.as_deref(), source.as_deref(), &from, &to, json),
        Command::History {
            source,
            key,
            within,
            from,
            to,
            scan,
            json,
        } => app::history(
            &cfg,
            &source,
            &key,
            within.as_deref(),
            from.as_deref(),
            to.as_deref(),
            scan,
            json,
        ),
        Command::Image {
            action: ImageAction::Take { source, wait },
        } => image::take(&cfg, &source, wait),
        Command::Image {
            action: ImageAction::List { source },
        } => image::list(&cfg, &source),
        Command::Verify { json } => verify::verify(&cfg, json),
        Command::Resync { source } => prune::resync(&cfg, &source),
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
