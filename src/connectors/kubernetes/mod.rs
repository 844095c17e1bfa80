//! Kubernetes: an application's objects (Deployments, ConfigMaps, Secrets, RBAC,
//! custom resources, Helm release records) journaled from the API server's watch,
//! restored to a moment into a cluster and namespaces of choice, and digested.
//!
//! - [`config`]: the `[[source]]` section and `kubernetes://` URLs;
//! - [`client`]: the `kube` client, raw JSON list/watch/apply;
//! - [`discovery`]: resources and the default exclusions;
//! - [`capture`]: the list/watch loops; [`object`]: journaled and restorable forms;
//! - [`helm`]: release records for `log` and `status`;
//! - [`restore`]: the restore target; [`transform`] (with [`json_patch`]): what a
//!   restore changes in objects; [`prune`]: recreate's and prune's deletions;
//! - [`digest`]: per-object digests.

pub mod capture;
pub mod client;
pub mod config;
pub mod digest;
pub mod discovery;
pub mod helm;
pub mod json_patch;
pub mod marker;
pub mod object;
pub mod prune;
pub mod restore;
pub mod transform;

use std::sync::Arc;

use crate::config::{ConfigError, SourceKind, Timeouts};
use crate::connectors::{
    Connector, ConnectorError, KindOption, KindOptions, OptionFor, SourceSettings,
};
use crate::restore::{RestoreError, Target};

/// The Kubernetes connector.
pub struct Kubernetes;

fn block_on<T>(
    f: impl std::future::Future<Output = Result<T, client::KubeError>>,
) -> Result<T, ConnectorError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ConnectorError::from_display)?
        .block_on(f)
        .map_err(ConnectorError::from_display)
}

impl Connector for Kubernetes {
    fn kind(&self) -> SourceKind {
        SourceKind::Kubernetes
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["kubernetes"]
    }

    fn parse_source(
        &self,
        _name: &str,
        table: toml::Table,
        field: &str,
    ) -> Result<Arc<dyn SourceSettings>, ConfigError> {
        Ok(Arc::new(config::KubeSettings::parse(table, field)?))
    }

    /// A restore replays the journal from its start: the first list is its image.
    fn uses_images(&self) -> bool {
        false
    }

    fn options(&self) -> &'static [KindOption] {
        &[
            KindOption {
                name: restore::NAMESPACE_MAP,
                help: "Kubernetes: restore namespaces under other names, `a=b,c=d`",
                command: OptionFor::Restore,
            },
            KindOption {
                name: restore::EXISTING,
                help: "Kubernetes: objects the target already has: `update` (default), `skip`, or `recreate` (delete and create where they differ)",
                command: OptionFor::Restore,
            },
            KindOption {
                name: restore::KEEP_NODE_PORTS,
                help: "Kubernetes: `true`: restore Services' allocated nodePorts as they were (default: the target allocates new ones)",
                command: OptionFor::Restore,
            },
            KindOption {
                name: prune::PRUNE,
                help: "Kubernetes: `true`: delete what the restored namespaces hold that the journal does not at the moment",
                command: OptionFor::Restore,
            },
            KindOption {
                name: transform::STORAGE_CLASS_MAP,
                help: "Kubernetes: storage classes of PVCs, PVs and StatefulSet claim templates, `old=new,*=new`",
                command: OptionFor::Restore,
            },
            KindOption {
                name: transform::IMAGE_REWRITE,
                help: "Kubernetes: container image prefixes, `registry.a/=registry.b/mirror/,...`",
                command: OptionFor::Restore,
            },
            KindOption {
                name: transform::REPLICAS,
                help: "Kubernetes: replica counts by object name, `web=3,*=1`",
                command: OptionFor::Restore,
            },
            KindOption {
                name: transform::ADD_LABELS,
                help: "Kubernetes: labels set on every restored object, `k=v,...`",
                command: OptionFor::Restore,
            },
            KindOption {
                name: transform::ADD_ANNOTATIONS,
                help: "Kubernetes: annotations set on every restored object, `k=v,...`",
                command: OptionFor::Restore,
            },
            KindOption {
                name: transform::JSON_PATCH_FILE,
                help: "Kubernetes: a JSON file of RFC 6902 patches by kind, {\"Deployment\": [ops], \"apps/v1/StatefulSet\": [ops]}",
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
        Ok(Box::new(restore::KubeTarget::new(url, options, timeouts)?))
    }

    fn digest(
        &self,
        url: &str,
        _: &KindOptions,
        timeouts: &Timeouts,
    ) -> Result<crate::digest::Digest, ConnectorError> {
        let u = config::KubeUrl::parse(url).map_err(ConnectorError)?;
        let scope = digest::Scope {
            all_namespaces: u.namespaces.is_empty(),
            namespaces: u.namespaces.iter().cloned().collect(),
            cluster: u
                .cluster_resources
                .iter()
                .map(|g| (g.clone(), None))
                .collect(),
        };
        let timeouts = *timeouts;
        block_on(async move {
            let kube = client::Kube::connect(&u.cluster, &timeouts).await?;
            digest::live(&kube, &scope, timeouts.read).await
        })
    }

    /// The uid of the cluster's `kube-system` namespace (made once when the
    /// cluster is created), with the URL's namespaces: restoring into other
    /// namespaces of the captured cluster is an ordinary restore.
    fn identity(&self, url: &str, timeouts: &Timeouts) -> Result<String, ConnectorError> {
        let u = config::KubeUrl::parse(url).map_err(ConnectorError)?;
        let timeouts = *timeouts;
        let uid = block_on(async move {
            let kube = client::Kube::connect(&u.cluster, &timeouts).await?;
            kube.get("/api/v1/namespaces/kube-system", timeouts.read)
                .await
        })?["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let u = config::KubeUrl::parse(url).map_err(ConnectorError)?;
        Ok(format!("{uid}/{}", u.namespaces.join(",")))
    }
}
