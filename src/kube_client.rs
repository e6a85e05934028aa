//! Building a Kubernetes client for the Prow service cluster or a build
//! cluster, the way `kubectl` would find one.
//!
//! - A kubeconfig path given: that file, with the context [`ContextRule`]
//!   picks: a named one (which must exist), the current one, or the one
//!   named like the cluster (`vsphere02`) when the file has it, else the
//!   current one. This lets one kubeconfig with a context per build cluster
//!   serve all.
//! - No path, inside a pod (`KUBERNETES_SERVICE_HOST` set): the mounted
//!   service account.
//! - No path, elsewhere: `$KUBECONFIG`, then `~/.kube/config`.
//!
//! Kubeconfig format: <https://kubernetes.io/docs/concepts/configuration/organize-cluster-access-kubeconfig/>.
//!
//! Reading JSON answers: [`decode_response`]. Every object this crate reads
//! from a Kubernetes API is fetched as text (`Client::request_text`) and
//! deserialized here, never with `Client::request::<T>` or `Api::get`/`list`:
//! when deserializing fails, kube-client 5 logs the *whole* response body at
//! `warn` (`tracing::warn!("{}, {:?}", text, e)` in `Client::request`), and for
//! a Secret that body is its data, passwords included (base64). Our errors
//! name the JSON error's category and position only, since serde's message
//! can quote the value it choked on.

use std::path::Path;
use std::time::Duration;

use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use serde::de::DeserializeOwned;

use crate::error::Error;

/// Which context of a kubeconfig file to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextRule {
    /// The one named like the cluster when the file has it, else the
    /// current one (the default build cluster, the Prow cluster).
    NamedOrCurrent,
    /// This one; a file without it is an error.
    Named(String),
    /// The file's current context (a build cluster's own kubeconfig).
    Current,
}

/// A client for `cluster_name` (used to pick a context and in errors).
pub async fn kube_client(
    kubeconfig: Option<&Path>,
    cluster_name: &str,
) -> Result<kube::Client, Error> {
    kube_client_with(kubeconfig, cluster_name, ContextRule::NamedOrCurrent).await
}

/// A client for `cluster_name` with the context `rule` picks.
pub async fn kube_client_with(
    kubeconfig: Option<&Path>,
    cluster_name: &str,
    rule: ContextRule,
) -> Result<kube::Client, Error> {
    let config = client_config(kubeconfig, cluster_name, rule).await?;
    tracing::debug!(cluster = cluster_name, server = %config.cluster_url, "Kubernetes client configured");
    kube::Client::try_from(config).map_err(|e| Error::KubeConfig {
        cluster: cluster_name.to_string(),
        message: format!("building the client: {e}"),
    })
}

/// The client settings for `cluster_name`: see the module docs.
pub async fn client_config(
    kubeconfig: Option<&Path>,
    cluster_name: &str,
    rule: ContextRule,
) -> Result<Config, Error> {
    let config_error = |message: String| Error::KubeConfig {
        cluster: cluster_name.to_string(),
        message,
    };
    Ok(match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| config_error(format!("reading kubeconfig {}: {e}", path.display())))?;
            let has = |name: &str| file.contexts.iter().any(|c| c.name == name);
            let context = match rule {
                ContextRule::NamedOrCurrent => has(cluster_name).then(|| cluster_name.to_string()),
                ContextRule::Current => None,
                ContextRule::Named(name) if has(&name) => Some(name),
                ContextRule::Named(name) => {
                    return Err(config_error(format!(
                        "kubeconfig {} has no context named {name:?}",
                        path.display()
                    )));
                }
            };
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
    })
}

/// Error messages of an API answer are shown up to this many bytes.
pub const MAX_API_MESSAGE: usize = 1024;

/// The error with an API answer's message cut to [`MAX_API_MESSAGE`]: for
/// an answer that is not a JSON `Status` (a proxy's HTML page, an endless
/// body) the client puts the whole body in the message, and errors end up
/// in log lines.
pub fn bounded(error: kube::Error) -> kube::Error {
    match error {
        kube::Error::Api(mut status) if status.message.len() > MAX_API_MESSAGE => {
            status.message = crate::error::truncate_body(&status.message, MAX_API_MESSAGE);
            kube::Error::Api(status)
        }
        other => other,
    }
}

/// A JSON error as category and position only. serde's own message can
/// quote the value it refused (`invalid value: string "..."`), and the
/// documents read here (secrets, profile files) hold passwords.
pub fn json_error_position(e: &serde_json::Error) -> String {
    let category = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "unexpected JSON shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{category} at line {} column {}", e.line(), e.column())
}

/// Await `text` (a `kube::Client::request_text` call) within `timeout` and
/// deserialize the body into `T` here, so that a body that does not fit `T`
/// is never logged or quoted (see the module docs). `cluster` and `action`
/// name the call in errors.
///
/// Errors: [`Error::KubeTimeout`]; [`Error::Kube`] for transport failures
/// and API statuses (a 404 is `kube::Error::Api` with code 404);
/// [`Error::KubeDecode`] for a body that is not UTF-8 or not a `T`, with a
/// position only.
pub async fn decode_response<T: DeserializeOwned>(
    cluster: &str,
    action: &str,
    timeout: Duration,
    text: impl Future<Output = Result<String, kube::Error>>,
) -> Result<T, Error> {
    let decode_error = |message: String| Error::KubeDecode {
        cluster: cluster.to_string(),
        action: action.to_string(),
        message,
    };
    let text = match tokio::time::timeout(timeout, text).await {
        Err(_) => {
            return Err(Error::KubeTimeout {
                cluster: cluster.to_string(),
                action: action.to_string(),
                timeout,
            });
        }
        // Its Debug holds the body's bytes: keep only the position.
        Ok(Err(kube::Error::FromUtf8(e))) => {
            return Err(decode_error(format!(
                "body is not UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            )));
        }
        Ok(Err(source)) => {
            return Err(Error::Kube {
                cluster: cluster.to_string(),
                action: action.to_string(),
                source: bounded(source),
            });
        }
        Ok(Ok(text)) => text,
    };
    serde_json::from_str(&text).map_err(|e| decode_error(json_error_position(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Data {
        #[allow(dead_code)]
        data: std::collections::BTreeMap<String, k8s_openapi::ByteString>,
    }

    async fn decode(body: &str) -> Result<Data, Error> {
        let body = body.to_string();
        decode_response(
            "c",
            "read x",
            Duration::from_secs(1),
            async move { Ok(body) },
        )
        .await
    }

    #[test]
    fn a_huge_api_error_message_is_cut_and_its_code_kept() {
        let status =
            kube::core::Status::failure(&"<html>".repeat(100_000), "BadGateway").with_code(502);
        let cut = bounded(kube::Error::Api(status.boxed()));
        match cut {
            kube::Error::Api(status) => {
                assert_eq!(status.code, 502);
                assert!(
                    status.message.len() < MAX_API_MESSAGE + 64,
                    "{}",
                    status.message.len()
                );
                assert!(status.message.ends_with("bytes in all)"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn decode_errors_give_a_position_and_never_the_value() {
        // (body, text the error must contain)
        let cases = [
            (r#"{"data":{"k":"!!hunter2!!"}}"#, "line 1 column"),
            (r#"{"data":{"k":"aHVudGVyMg=="},"#, "truncated JSON"),
            (
                r#"{"data":{"k":42, "p":"hunter2"}}"#,
                "unexpected JSON shape",
            ),
        ];
        for (body, want) in cases {
            let err = decode(body).await.expect_err(body);
            let text = err.to_string();
            assert_eq!(err.kind(), "kube_decode", "{text}");
            assert!(text.contains(want), "{body}: {text}");
            assert!(text.contains("read x"), "{text}");
            for secret in ["hunter2", "aHVudGVyMg", "!!"] {
                assert!(!text.contains(secret), "{text}");
                assert!(!format!("{err:?}").contains(secret), "{err:?}");
            }
        }
        assert!(decode(r#"{"data":{"k":"aHVudGVyMg=="}}"#).await.is_ok());
    }

    #[tokio::test]
    async fn a_body_that_is_not_utf8_is_a_decode_error_without_its_bytes() {
        let bad = String::from_utf8(vec![b'{', b'"', 0xff, b'"']).expect_err("0xff is not UTF-8");
        let err = decode_response::<Data>("c", "read x", Duration::from_secs(1), async move {
            Err(kube::Error::FromUtf8(bad))
        })
        .await
        .expect_err("not UTF-8");
        assert_eq!(err.kind(), "kube_decode");
        assert!(err.to_string().contains("offset 2"), "{err}");
        assert!(!format!("{err:?}").contains("255"), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_is_a_timeout() {
        let err = decode_response::<Data>("c", "read x", Duration::from_secs(1), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(String::new())
        })
        .await
        .expect_err("too slow");
        assert!(matches!(err, Error::KubeTimeout { .. }), "{err}");
    }
}

#[cfg(test)]
mod context_tests {
    use super::*;

    /// A kubeconfig whose current context is `a`, with a context
    /// `vsphere02` for another server.
    fn two_contexts(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: a\n\
             clusters:\n- {name: a, cluster: {server: 'https://a.example.com:6443'}}\n\
             - {name: b, cluster: {server: 'https://b.example.com:6443'}}\n\
             users:\n- {name: u, user: {token: t}}\n\
             contexts:\n- {name: a, context: {cluster: a, user: u}}\n\
             - {name: vsphere02, context: {cluster: b, user: u}}\n",
        )
        .unwrap();
        path
    }

    #[tokio::test]
    async fn each_rule_picks_its_context_and_a_missing_named_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = two_contexts(dir.path());
        let server = |rule: ContextRule, cluster: &'static str| {
            let path = path.clone();
            async move {
                client_config(Some(&path), cluster, rule)
                    .await
                    .map(|c| c.cluster_url.host().unwrap().to_string())
            }
        };
        assert_eq!(
            server(ContextRule::NamedOrCurrent, "vsphere02")
                .await
                .unwrap(),
            "b.example.com"
        );
        assert_eq!(
            server(ContextRule::NamedOrCurrent, "build").await.unwrap(),
            "a.example.com"
        );
        assert_eq!(
            server(ContextRule::Current, "vsphere02").await.unwrap(),
            "a.example.com"
        );
        assert_eq!(
            server(ContextRule::Named("vsphere02".into()), "x")
                .await
                .unwrap(),
            "b.example.com"
        );
        let err = server(ContextRule::Named("vsphere09".into()), "vsphere09")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no context named \"vsphere09\""), "{err}");
        assert!(err.contains("vsphere09"), "{err}");
    }
}
