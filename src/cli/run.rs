//! `tidemark run`: capture every configured source until SIGINT/SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::task::JoinSet;

use crate::capture::{self, CaptureContext, SourceJournal};
use crate::config::Config;
use crate::time::Timestamp;

/// How often retention runs while capturing.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub fn run(cfg: &Config) -> Result<()> {
    // Build every capture before touching the journal: a source that cannot run
    // stops start-up with nothing written.
    let mut built = Vec::new();
    for s in &cfg.sources {
        built.push((s.name().to_string(), s.kind(), capture::build(s)?));
    }
    let retention = cfg.retention()?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        for (_, _, source) in &built {
            source.preflight().await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let journal = Arc::new(super::open_for_write(cfg)?);
    rt.block_on(async move {
        let (trigger, shutdown) = capture::shutdown_pair();
        let mut tasks = JoinSet::new();
        for (name, kind, source) in built {
            let id = journal.register_source(&name, kind)?;
            tracing::info!(source = %name, %kind, "capture starting");
            let ctx = CaptureContext {
                journal: SourceJournal::new(Arc::clone(&journal), id, name.clone()),
                shutdown: shutdown.clone(),
            };
            let fut = source.run(ctx);
            tasks.spawn(async move { (name, fut.await) });
        }
        if let Some(window) = retention {
            let (journal, mut stop) = (Arc::clone(&journal), shutdown.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PRUNE_EVERY);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.wait() => return,
                    }
                    let j = Arc::clone(&journal);
                    match tokio::task::spawn_blocking(move || j.prune(Timestamp::now(), window, false)).await {
                        Ok(Err(error)) => tracing::error!(%error, "retention failed"),
                        Err(error) => tracing::error!(%error, "retention task failed"),
                        Ok(Ok(_)) => {}
                    }
                }
            });
        }
        let mut failure = None;
        let stop_signal = wait_for_signal();
        tokio::pin!(stop_signal);
        loop {
            tokio::select! {
                r = &mut stop_signal, if !shutdown.is_fired() => {
                    r?;
                    tracing::info!("stopping: appending what is in flight and acknowledging it");
                    trigger.fire();
                }
                done = tasks.join_next() => match done {
                    None => break,
                    Some(Ok((name, Ok(())))) => tracing::info!(source = %name, "capture stopped"),
                    Some(Ok((name, Err(error)))) => {
                        tracing::error!(source = %name, %error, "capture failed; stopping the others");
                        failure.get_or_insert(anyhow::Error::new(error));
                        trigger.fire();
                    }
                    Some(Err(error)) => {
                        failure.get_or_insert(anyhow::anyhow!("capture task panicked: {error}"));
                        trigger.fire();
                    }
                },
            }
        }
        failure.map_or(Ok(()), Err)
    })
}

/// Completes on SIGINT or SIGTERM.
async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot install the SIGINT handler"),
        _ = term.recv() => Ok(()),
    }
}
