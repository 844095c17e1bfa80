//! PostgreSQL: capture by logical replication (`pgoutput`), restore, digest.
//!
//! - [`repl`]: our streaming-replication client and pgoutput decoder;
//! - [`conn`]: the URL and the SQL connection; [`tls`]: `sslmode` and its files for
//!   every connection; [`error`]: what can go wrong;
//! - [`config`]: the `[[source]]` section;
//! - [`setup`], [`ddl`], [`image`], [`capture`]: preparing the source, DDL capture,
//!   the base image and the streaming loop; [`sequences`]: sequence values in the
//!   stream;
//! - [`restore`]: the restore target; [`digest`]: the per-table digest.

pub mod beside;
pub mod capture;
mod changes;
pub mod config;
pub mod conn;
pub mod ddl;
pub mod digest;
pub mod error;
pub mod image;
pub mod layout;
pub mod marker;
mod net;
mod net_apply;
mod net_restore;
mod net_scan;
pub mod net_store;
pub mod repl;
pub mod restore;
mod restore_image;
mod restore_sql;
pub mod sequences;
pub mod setup;
pub mod tls;

use std::sync::Arc;

pub use self::error::PgError;
use crate::config::{ConfigError, SourceKind, Timeouts};
use crate::connectors::{Connector, ConnectorError, KindOptions, SourceSettings};
use crate::digest::Digest;
use crate::restore::{RestoreError, Target};

/// URL schemes of PostgreSQL.
pub const SCHEMES: &[&str] = &["postgres", "postgresql"];

/// The PostgreSQL connector.
pub struct Postgres;

impl Connector for Postgres {
    fn kind(&self) -> SourceKind {
        SourceKind::Postgres
    }

    fn schemes(&self) -> &'static [&'static str] {
        SCHEMES
    }

    fn parse_source(
        &self,
        name: &str,
        table: toml::Table,
        field: &str,
    ) -> Result<Arc<dyn SourceSettings>, ConfigError> {
        Ok(Arc::new(config::PostgresSettings::parse(
            name, table, field,
        )?))
    }

    fn uses_images(&self) -> bool {
        true
    }

    fn options(&self) -> &'static [crate::connectors::KindOption] {
        use crate::connectors::{KindOption, OptionFor};
        const HELP: &str = "PostgreSQL: only these tables, `schema.table,schema.*,table` (partitions follow their parent)";
        &[
            KindOption {
                name: layout::TABLES,
                help: HELP,
                command: OptionFor::Restore,
            },
            KindOption {
                name: layout::TABLES,
                help: HELP,
                command: OptionFor::Digest,
            },
            KindOption {
                name: beside::SCHEMA_MAP,
                help: "PostgreSQL: restore schemas under other names, beside what the target holds, `old=new,...`",
                command: OptionFor::Restore,
            },
        ]
    }

    fn target(
        &self,
        url: &str,
        options: &KindOptions,
        timeouts: &Timeouts,
    ) -> Result<Box<dyn Target>, RestoreError> {
        Ok(Box::new(restore::PgTarget::new(url, options, timeouts)?))
    }

    fn digest(
        &self,
        url: &str,
        options: &KindOptions,
        timeouts: &Timeouts,
    ) -> Result<Digest, ConnectorError> {
        let selection = layout::Selection::parse(options.get(layout::TABLES).unwrap_or(""))
            .map_err(ConnectorError)?;
        block_on(digest::digest_with(url, timeouts, &selection))
    }

    fn identity(&self, url: &str, timeouts: &Timeouts) -> Result<String, ConnectorError> {
        block_on(identity(url, timeouts))
    }

    fn resyncs(&self) -> bool {
        true
    }

    fn scheduled_images(&self) -> bool {
        true
    }
}

/// The server's system identifier (unique per cluster, kept by physical copies)
/// and the database; where the role may not read the control data, host, port
/// and database as given.
async fn identity(url: &str, timeouts: &Timeouts) -> Result<String, PgError> {
    let conn = conn::ConnInfo::parse(url)?.with_timeouts(timeouts);
    let client = conn.connect().await?;
    let row = conn
        .bounded("to an identity query", timeouts.read, async {
            client
                .query_one(
                    "SELECT (SELECT system_identifier::text FROM pg_control_system()), current_database()::text",
                    &[],
                )
                .await
                .map_err(|e| PgError::query(&conn.display, &e))
        })
        .await;
    Ok(match row {
        Ok(r) => format!(
            "{}/{}",
            r.get::<_, Option<String>>(0).unwrap_or_default(),
            r.get::<_, String>(1)
        ),
        Err(_) => format!(
            "{}:{}/{}",
            conn.host.to_ascii_lowercase(),
            conn.port,
            conn.dbname
        ),
    })
}

/// Runs a PostgreSQL future from blocking code (a `digest` or an identity check).
pub(crate) fn block_on<T>(
    work: impl std::future::Future<Output = Result<T, PgError>>,
) -> Result<T, ConnectorError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ConnectorError(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(work).map_err(ConnectorError::from_display)
}
