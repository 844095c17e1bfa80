//! The PostgreSQL base image (format `pg-copy-v1`): the definitions from `pg_dump
//! --section=pre-data`, then per table its column list and its rows in COPY text
//! format, then sequence values, then indexes, constraints and triggers
//! (`--section=post-data`, applied after the rows as `pg_restore` does), all read in the slot's exported snapshot so the image and
//! the stream meet exactly at the slot's consistent point.

use futures_util::StreamExt;

use super::conn::ConnInfo;
use super::repl::Lsn;
use super::setup::{quote_ident, quote_literal, DDL_TRIGGER};
use super::PgError;
use crate::capture::SourceJournal;
use crate::event::BaseImageMeta;
use crate::journal::Progress;
use crate::position::Position;
use crate::time::Timestamp;

/// The image format name.
pub const FORMAT: &str = "pg-copy-v1";
/// COPY data is cut into chunks of about this size.
const CHUNK_BYTES: usize = 1 << 20;

/// One chunk of a PostgreSQL base image.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PgImageChunk {
    /// What the chunk holds.
    #[prost(oneof = "PgImagePart", tags = "1, 2, 3, 4, 5, 6")]
    pub part: Option<PgImagePart>,
}

/// The parts of a PostgreSQL base image, in this order: one schema, then for each
/// table a `Table` followed by its `CopyData`, then the sequences.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PgImagePart {
    /// `pg_dump --schema-only` output (tidemark's own objects removed).
    #[prost(string, tag = "1")]
    Schema(String),
    /// Starts a table; the `CopyData` chunks that follow are its rows.
    #[prost(message, tag = "2")]
    Table(PgImageTable),
    /// Rows in COPY text format (chunks split anywhere; concatenate them).
    #[prost(bytes = "vec", tag = "3")]
    CopyData(Vec<u8>),
    /// A sequence's value.
    #[prost(message, tag = "4")]
    Sequence(PgImageSequence),
    /// Something the database held that the image (and logical decoding) cannot
    /// carry, named for the restore's report.
    #[prost(string, tag = "5")]
    NotCaptured(String),
    /// Indexes, constraints, triggers and rules (`pg_dump --section=post-data`),
    /// applied after the rows are loaded, as `pg_restore` does. Images taken before
    /// it existed hold everything in `Schema`.
    #[prost(string, tag = "6")]
    PostData(String),
}

/// A table in the image.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PgImageTable {
    /// Schema.
    #[prost(string, tag = "1")]
    pub schema: String,
    /// Table.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Columns in COPY order.
    #[prost(string, repeated, tag = "3")]
    pub columns: Vec<String>,
}

/// A sequence's state in the image.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PgImageSequence {
    /// Schema.
    #[prost(string, tag = "1")]
    pub schema: String,
    /// Sequence.
    #[prost(string, tag = "2")]
    pub name: String,
    /// `last_value`; absent if the sequence was never used.
    #[prost(int64, optional, tag = "3")]
    pub last_value: Option<i64>,
}

/// Finds a PostgreSQL client tool: `$TIDEMARK_PG_BIN/<tool>`, then the newest
/// `/usr/lib/postgresql/*/bin/<tool>` (Debian's layout; its `/usr/bin` entries are
/// wrappers that need a configured cluster), then `PATH` (symlinks followed).
pub fn pg_tool(tool: &str) -> std::path::PathBuf {
    if let Ok(dir) = std::env::var("TIDEMARK_PG_BIN") {
        return std::path::Path::new(&dir).join(tool);
    }
    let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            Some((
                e.file_name().to_str()?.parse().ok()?,
                e.path().join("bin").join(tool),
            ))
        })
        .filter(|(_, p): &(u32, std::path::PathBuf)| p.is_file())
        .collect();
    versions.sort();
    if let Some((_, p)) = versions.pop() {
        return p;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .unwrap_or_else(|| tool.into())
}

/// Makes a schema dump plain SQL: removes tidemark's event trigger (its function
/// lives in the excluded `tidemark` schema) and the psql-only `\restrict` /
/// `\unrestrict` lines that pg_dump writes since the 2025 minor releases.
fn strip_own_objects(dump: &str) -> String {
    let mut out = String::with_capacity(dump.len());
    let mut skipping = false;
    for section in dump.split_inclusive('\n') {
        if section.starts_with("-- Name: ") {
            skipping = section.starts_with(&format!("-- Name: {DDL_TRIGGER}; Type: EVENT TRIGGER"));
        }
        if section.starts_with("\\restrict ") || section.starts_with("\\unrestrict ") {
            continue;
        }
        if !skipping {
            out.push_str(section);
        }
    }
    out
}

/// Runs `pg_dump --section=<section>` (`pre-data`: the definitions; `post-data`:
/// indexes, constraints, triggers, rules) in `snapshot`.
async fn dump_schema(conn: &ConnInfo, snapshot: &str, section: &str) -> Result<String, PgError> {
    let tool = pg_tool("pg_dump");
    let out = tokio::process::Command::new(&tool)
        .arg(format!("--section={section}"))
        .args([
            "--no-owner",
            "--no-privileges",
            "--no-publications",
            "--no-subscriptions",
            "--exclude-schema=tidemark",
        ])
        .arg(format!("--snapshot={snapshot}"))
        .envs(conn.child_env())
        .output()
        .await
        .map_err(|e| {
            PgError::Tool(format!(
                "cannot run {}: {e}; install the PostgreSQL client tools or set TIDEMARK_PG_BIN",
                tool.display()
            ))
        })?;
    if !out.status.success() {
        return Err(PgError::Tool(format!(
            "pg_dump --section={section} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let dump = String::from_utf8(out.stdout).map_err(|e| {
        PgError::Tool(format!(
            "the schema holds bytes that are not UTF-8 (at byte {} of pg_dump --schema-only, as in a SQL_ASCII database with non-ASCII names, defaults or comments): tidemark carries schemas as UTF-8 and will not change them; make the definitions ASCII or UTF-8",
            e.utf8_error().valid_up_to()
        ))
    })?;
    Ok(strip_own_objects(&dump))
}

/// Copies the database as of the exported `snapshot` into a base image at
/// `consistent_point`, sealing it with that position as the checkpoint: the image a
/// history starts from.
pub async fn take(
    conn: &ConnInfo,
    journal: &SourceJournal,
    publication: &str,
    snapshot: &str,
    consistent_point: Lsn,
) -> Result<BaseImageMeta, PgError> {
    let time = Timestamp::now();
    let image = copy(conn, journal, publication, snapshot, consistent_point, time).await?;
    Ok(image
        .finish(Progress {
            checkpoint: vec![Position::postgres(consistent_point.as_u64())],
            coverage: Some(time),
        })
        .await?)
}

/// Copies the database as of the exported `snapshot` (taken at `consistent_point`)
/// into an image that is complete but not sealed: the caller seals it, at the start
/// of a history or placed among the stream's events.
pub async fn copy(
    conn: &ConnInfo,
    journal: &SourceJournal,
    publication: &str,
    snapshot: &str,
    consistent_point: Lsn,
    time: Timestamp,
) -> Result<crate::capture::ImageSink, PgError> {
    let started = std::time::Instant::now();
    let mut image = journal
        .image_sink(Position::postgres(consistent_point.as_u64()), time, FORMAT)
        .await?;
    let client = conn.connect().await?;
    let q = |e: tokio_postgres::Error| PgError::query(&conn.display, &e);
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await
        .map_err(q)?;
    image
        .put(encode(PgImagePart::Schema(
            dump_schema(conn, snapshot, "pre-data").await?,
        )))
        .await?;
    let post_data = dump_schema(conn, snapshot, "post-data").await?;
    let tables = client
        .query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2", &[&publication])
        .await
        .map_err(q)?;
    let progress =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    progress.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bytes} ({bytes_per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let (mut rows_bytes, mut table_count) = (0u64, 0u64);
    for t in tables {
        let (schema, name): (String, String) = (t.get(0), t.get(1));
        let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        let columns: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0
                 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                &[&qualified],
            )
            .await
            .map_err(q)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        progress.set_message(format!("base image: {schema}.{name}"));
        image
            .put(encode(PgImagePart::Table(PgImageTable {
                schema: schema.clone(),
                name: name.clone(),
                columns: columns.clone(),
            })))
            .await?;
        let cols = columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let stream = client
            .copy_out(&format!("COPY {qualified} ({cols}) TO STDOUT"))
            .await
            .map_err(q)?;
        futures_util::pin_mut!(stream);
        let mut buf = Vec::with_capacity(CHUNK_BYTES + 65536);
        while let Some(data) = stream.next().await {
            let data = data.map_err(q)?;
            progress.inc(data.len() as u64);
            rows_bytes += data.len() as u64;
            buf.extend_from_slice(&data);
            if buf.len() >= CHUNK_BYTES {
                image
                    .put(encode(PgImagePart::CopyData(std::mem::take(&mut buf))))
                    .await?;
            }
        }
        if !buf.is_empty() {
            image.put(encode(PgImagePart::CopyData(buf))).await?;
        }
        table_count += 1;
    }
    for s in client
        .query("SELECT schemaname::text, sequencename::text, last_value FROM pg_sequences ORDER BY 1, 2", &[])
        .await
        .map_err(q)?
    {
        image.put(encode(PgImagePart::Sequence(PgImageSequence { schema: s.get(0), name: s.get(1), last_value: s.get(2) }))).await?;
    }
    for what in super::setup::not_captured(&client, &conn.display).await? {
        image.put(encode(PgImagePart::NotCaptured(what))).await?;
    }
    image.put(encode(PgImagePart::PostData(post_data))).await?;
    client.batch_execute("COMMIT").await.map_err(q)?;
    progress.finish_and_clear();
    tracing::info!(
        source = journal.name(),
        tables = table_count,
        bytes = rows_bytes,
        position = %consistent_point,
        seconds = started.elapsed().as_secs_f64(),
        "base image copied"
    );
    Ok(image)
}

/// Takes a base image while capture goes on, without pausing it: a temporary slot
/// on a second replication connection exports a snapshot at its consistent point
/// C; the database is copied in that snapshot; the image is sealed once the
/// main stream has journaled past C, placed after the last change committed before
/// C (those are exactly the transactions the snapshot sees).
pub async fn take_placed(
    conn: &ConnInfo,
    journal: &SourceJournal,
    publication: &str,
    slot: &str,
) -> Result<BaseImageMeta, PgError> {
    let mut repl = super::repl::ReplicationConnection::connect(&conn.replication()).await?;
    let mut temp = format!("{slot}_image");
    temp.truncate(63);
    let created = repl
        .create_replication_slot(&temp, true, super::repl::SnapshotAction::Export)
        .await?;
    let snapshot = created.snapshot_name.ok_or_else(|| {
        PgError::History("the server exported no snapshot for the scheduled image".into())
    })?;
    let c = created.consistent_point;
    let image = copy(conn, journal, publication, &snapshot, c, Timestamp::now()).await?;
    // The temporary slot goes with its connection; the copy no longer needs it.
    drop(repl);
    loop {
        let reached = journal.checkpoints()?.iter().any(|cp| {
            matches!(&cp.position.kind, Some(crate::position::PositionKind::Postgres(p)) if p.lsn >= c.as_u64())
        });
        if reached {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before_c = Position::postgres_change(c.as_u64().saturating_sub(1), u32::MAX);
    let found = journal.journal().seq_at_position(journal.id(), &before_c)?;
    let previous = journal.latest_image()?.map_or(0, |m| m.after_seq);
    let meta = image
        .finish_placed(found.unwrap_or(0).max(previous))
        .await?;
    tracing::info!(source = journal.name(), image = meta.id, position = %c, after_seq = meta.after_seq, "scheduled base image sealed");
    Ok(meta)
}

fn encode(part: PgImagePart) -> Vec<u8> {
    prost::Message::encode_to_vec(&PgImageChunk { part: Some(part) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_our_event_trigger() {
        let dump = "\\restrict abc\nSET x;\n--\n-- Name: tidemark_ddl; Type: EVENT TRIGGER; Schema: -; Owner: -\n--\n\nCREATE EVENT TRIGGER tidemark_ddl ON ddl_command_end\n   EXECUTE FUNCTION tidemark.capture_ddl();\n\n\n--\n-- Name: t; Type: TABLE; Schema: public; Owner: -\n--\n\nCREATE TABLE public.t (a int);\n";
        let s = strip_own_objects(dump);
        assert!(!s.contains("tidemark_ddl"), "{s}");
        assert!(s.contains("CREATE TABLE public.t"), "{s}");
        assert!(s.starts_with("SET x;"), "{s}");
    }
}
