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
                source,
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
