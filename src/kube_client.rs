//! Building a Kubernetes client for the Prow service cluster or a build
//! cluster, the way `kubectl` would find one.
//!
//! - A kubeconfig path given: that file, with the context named like the
//!   cluster (`vsphere02`) when the file has one, else its current context.
//!   This lets one kubeconfig with a context per build cluster serve all.
//! - No path, inside a pod (`KUBERNETES_SERVICE_HOST` set): the mounted
//!   service account.
//! - No path, elsewhere: `$KUBECONFIG`, then `~/.kube/config`.
//!
//! Kubeconfig format: <https://kubernetes.io/docs/concepts/configuration/organize-cluster-access-kubeconfig/>.

use std::path::Path;

use kube::config::{Config, KubeConfigOptions, Kubeconfig};

use crate::error::Error;

/// A client for `cluster_name` (used to pick a context and in errors).
pub async fn kube_client(
    kubeconfig: Option<&Path>,
    cluster_name: &str,
) -> Result<kube::Client, Error> {
    let config_error = |message: String| Error::KubeConfig {
        cluster: cluster_name.to_string(),
        message,
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| config_error(format!("reading kubeconfig {}: {e}", path.display())))?;
            let context = file
                .contexts
                .iter()
                .any(|c| c.name == cluster_name)
                .then(|| cluster_name.to_string());
            let options = KubeConfigOptions {
                context,
                ..KubeConfigOptions::default()
            };
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| config_error(format!("kubeconfig {}: {e}", path.display())))?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Config::incluster()
            .map_err(|e| config_error(format!("in-cluster service account: {e}")))?,
        None => Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .map_err(|e| {
                config_error(format!(
                    "default kubeconfig ($KUBECONFIG or ~/.kube/config): {e}"
                ))
            })?,
    };
    tracing::debug!(cluster = cluster_name, server = %config.cluster_url, "Kubernetes client configured");
    kube::Client::try_from(config).map_err(|e| config_error(format!("building the client: {e}")))
}
