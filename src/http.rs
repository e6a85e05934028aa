//! HTTP shared by the sinks that push over HTTP (remote-write and the
//! Pushgateway): basic authentication, TLS, credential files, the `reqwest`
//! client they configure, how a request is authenticated ([`Auth`]) and how
//! an error body is read (bounded: [`read_error_body`]).
//!
//! The field names are those of Prometheus's `basic_auth` and `tls_config`
//! blocks (<https://prometheus.io/docs/prometheus/latest/configuration/configuration/#tls_config>)
//! so an operator can paste theirs into either sink. Keeping one copy here
//! means both sinks accept the same fields and refuse the same mistakes with
//! the same words; only the field path in front (`remote_write.tls_config`,
//! `pushgateway.tls_config`) differs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::{Error, error_chain};
use crate::secret::Secret;

/// HTTP basic authentication, as in Prometheus: a user name and at most one
/// of `password` and `password_file`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// Password given inline (or use `password_file`).
    #[serde(default, deserialize_with = "deserialize_opt_secret")]
    pub password: Option<Secret>,
    /// File holding the password (one trailing newline dropped), read at
    /// every request so a rotated Kubernetes Secret is picked up without a
    /// restart.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

impl BasicAuth {
    /// Check the block found at `field` (e.g. `remote_write.basic_auth`);
    /// messages start with the path of the field at fault.
    pub fn validate(&self, field: &str) -> Result<(), Error> {
        if self.username.is_empty() {
            return Err(Error::Config(format!(
                "{field}.username: must not be empty"
            )));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(Error::Config(format!(
                "{field}: set one of password and password_file, not both"
            )));
        }
        Ok(())
    }

    /// The password now: inline, read from `password_file`, or empty when
    /// neither is set (Prometheus sends an empty password then).
    pub fn password(&self, field: &str) -> Result<Secret, Error> {
        match (&self.password, &self.password_file) {
            (Some(password), _) => Ok(password.clone()),
            (None, Some(path)) => read_credential(path, &format!("{field}.password_file")),
            (None, None) => Ok(Secret::default()),
        }
    }
}

/// TLS settings, as in Prometheus's `tls_config`. The bundled Mozilla
/// (webpki) roots and the system's roots are always trusted; `ca_file` adds
/// to them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with further CA certificates to trust (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file with the client certificate (and any intermediates), for a
    /// server or proxy that asks for one. Needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM file with the client certificate's private key (PKCS#8, PKCS#1 or
    /// SEC1). Needs `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate. For test set-ups only: anyone on the
    /// path can then read what is sent, credentials included.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Accepted for compatibility only when it equals the URL's host: the
    /// certificate is always checked against the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// Check the block found at `field` (e.g. `pushgateway.tls_config`) for a
    /// target whose URL has `url_host`; messages start with the path of the
    /// field at fault.
    pub fn validate(&self, field: &str, url_host: Option<&str>) -> Result<(), Error> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Error::Config(format!(
                "{field}: set both cert_file and key_file for a client certificate, or neither"
            )));
        }
        if let Some(sni) = &self.server_name
            && Some(sni.as_str()) != url_host
        {
            return Err(Error::Config(format!(
                "{field}.server_name: {sni:?} differs from the URL's host; \
                 only the URL's host is supported"
            )));
        }
        Ok(())
    }
}

/// Read a password or token from a file, as mounted from a Kubernetes Secret
/// (one trailing newline dropped). `field` names the setting in the error,
/// e.g. `pushgateway.bearer_token_file`; the content never appears in it.
pub fn read_credential(path: &Path, field: &str) -> Result<Secret, Error> {
    Secret::from_file(path).map_err(|source| Error::Io {
        context: format!("reading {field} {}", path.display()),
        source,
    })
}

/// A credential given inline, or a file read at every use so a rotated
/// Kubernetes Secret is picked up without a restart.
#[derive(Debug, Clone)]
pub enum Credential {
    /// Nothing set (an empty password, as Prometheus sends then).
    Empty,
    Inline(Secret),
    /// `field` names the setting, for errors.
    File {
        path: PathBuf,
        field: String,
    },
}

impl Credential {
    /// From an inline value and a file setting (at most one is set; the
    /// sinks' validation refuses both).
    pub fn from_parts(inline: Option<&Secret>, file: Option<&Path>, field: &str) -> Credential {
        match (inline, file) {
            (_, Some(path)) => Credential::File {
                path: path.to_path_buf(),
                field: field.to_string(),
            },
            (Some(secret), None) => Credential::Inline(secret.clone()),
            (None, None) => Credential::Empty,
        }
    }

    /// The credential now (files are read again). An empty file is an
    /// error: it is a mount gone wrong, not a password.
    pub fn load(&self) -> Result<Secret, Error> {
        match self {
            Credential::Empty => Ok(Secret::default()),
            Credential::Inline(secret) => Ok(secret.clone()),
            Credential::File { path, field } => {
                let secret = read_credential(path, field)?;
                if secret.is_empty() {
                    return Err(Error::Config(format!(
                        "{field}: {} is empty",
                        path.display()
                    )));
                }
                Ok(secret)
            }
        }
    }
}

/// How a sink authenticates its requests: the `Authorization` header.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    /// `Authorization: Basic base64(user:password)`.
    Basic {
        username: String,
        password: Credential,
    },
    /// `Authorization: <scheme> <credentials>` (`Bearer` for tokens).
    Header {
        scheme: String,
        credentials: Credential,
    },
}

impl Auth {
    /// The `Authorization` header value now, credential files read again;
    /// marked sensitive so no HTTP-level log shows it.
    pub fn header_value(&self) -> Result<Option<reqwest::header::HeaderValue>, Error> {
        let value = match self {
            Auth::None => return Ok(None),
            Auth::Basic { username, password } => {
                use base64::Engine as _;
                let raw = format!("{username}:{}", password.load()?.expose());
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            }
            Auth::Header {
                scheme,
                credentials,
            } => format!("{scheme} {}", credentials.load()?.expose()),
        };
        let mut value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
            Error::Config("credentials are not a valid HTTP header value".to_string())
        })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// Add the header to a request.
    pub fn apply(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, Error> {
        Ok(match self.header_value()? {
            Some(value) => request.header(reqwest::header::AUTHORIZATION, value),
            None => request,
        })
    }

    /// Fail at start, not at the first push, when a credential file is
    /// missing or empty.
    pub fn check(&self) -> Result<(), Error> {
        self.header_value().map(drop)
    }
}

/// Error bodies are read up to this many bytes; the rest is not waited for.
pub const MAX_READ_BODY: usize = 64 * 1024;
/// Error bodies are shown (logs, errors) up to this many bytes.
pub const MAX_SHOWN_BODY: usize = 1024;

/// The body of a refused request, read up to [`MAX_READ_BODY`] bytes within
/// `left`, trimmed and cut to [`MAX_SHOWN_BODY`] for a log line. Never
/// parsed: operators see what the peer said. A peer sending an endless or
/// trickling body costs at most those bytes and that time.
pub async fn read_error_body(mut response: reqwest::Response, left: Duration) -> String {
    let mut buf: Vec<u8> = Vec::new();
    let mut more = false;
    let mut failed = None;
    let read = async {
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_READ_BODY - buf.len();
                    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if buf.len() >= MAX_READ_BODY {
                        more = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(left, read).await;
    if let (Some(e), true) = (failed, buf.is_empty()) {
        return format!("(body unreadable: {})", error_chain(&e.without_url()));
    }
    let text = String::from_utf8_lossy(&buf);
    let text = text.trim_end();
    let cut = crate::error::truncate_body(text, MAX_SHOWN_BODY);
    if more {
        // Not read to the end: say so rather than give a wrong length.
        cut.replace(
            &format!("({} bytes in all)", text.len()),
            &format!("(over {MAX_READ_BODY} bytes)"),
        )
    } else {
        cut
    }
}

/// A client builder with `user_agent`, `connect_timeout` and the TLS
/// settings of the block found at `field` applied: the CA file's
/// certificates trusted, the client identity loaded, verification off when
/// asked. Files are read now, so a missing or malformed one fails at start.
/// Logging an insecure set-up is left to the caller, which knows the target.
pub fn client_builder(
    tls: &TlsConfig,
    field: &str,
    connect_timeout: Duration,
    user_agent: &str,
) -> Result<reqwest::ClientBuilder, Error> {
    // No redirects: a 307 would resend the body and the Authorization
    // header to wherever the Location header points.
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(user_agent)
        .connect_timeout(connect_timeout);
    if let Some(path) = &tls.ca_file {
        for certificate in read_ca_file(path, &format!("{field}.ca_file"))? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) {
        builder = builder.identity(read_identity(cert_file, key_file, field)?);
    }
    if tls.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder)
}

/// The certificates of a PEM bundle. A file without any is refused: it is
/// surely the wrong file, and the TLS error it would cause later would not
/// name it.
fn read_ca_file(path: &Path, field: &str) -> Result<Vec<reqwest::Certificate>, Error> {
    let pem = read_file(path, field)?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| Error::Config(format!("{field}: {} is not PEM: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(Error::Config(format!(
            "{field}: {} holds no certificate",
            path.display()
        )));
    }
    Ok(certificates)
}

/// The client certificate and its key, as reqwest takes them: one PEM
/// buffer holding both. The message never quotes the files' content.
fn read_identity(
    cert_file: &Path,
    key_file: &Path,
    field: &str,
) -> Result<reqwest::Identity, Error> {
    let mut pem = read_file(cert_file, &format!("{field}.cert_file"))?;
    pem.push(b'\n');
    pem.extend_from_slice(&read_file(key_file, &format!("{field}.key_file"))?);
    reqwest::Identity::from_pem(&pem).map_err(|e| {
        Error::Config(format!(
            "{field}: cert_file {} and key_file {} are not a PEM certificate \
             and private key: {}",
            cert_file.display(),
            key_file.display(),
            error_chain(&e)
        ))
    })
}

fn read_file(path: &Path, field: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        context: format!("reading {field} {}", path.display()),
        source,
    })
}

/// Serde helper for an optional inline secret (`password`, `bearer_token`,
/// `credentials`): the value goes straight into a [`Secret`], so it is never
/// printed by `Debug`.
pub fn deserialize_opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Option::<Secret>::deserialize(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(result: Result<(), Error>) -> String {
        match result {
            Err(Error::Config(message)) => message,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn basic_auth_messages_name_the_field_under_the_given_path() {
        let mut basic = BasicAuth {
            username: String::new(),
            password: None,
            password_file: None,
        };
        assert_eq!(
            config_error(basic.validate("remote_write.basic_auth")),
            "remote_write.basic_auth.username: must not be empty"
        );
        basic.username = "ci".into();
        basic.password = Some(Secret::new("p"));
        basic.password_file = Some("/p".into());
        assert_eq!(
            config_error(basic.validate("pushgateway.basic_auth")),
            "pushgateway.basic_auth: set one of password and password_file, not both"
        );
    }

    #[test]
    fn server_name_is_accepted_only_when_it_is_the_urls_host() {
        let tls = TlsConfig {
            server_name: Some("h.example".into()),
            ..TlsConfig::default()
        };
        tls.validate("remote_write.tls_config", Some("h.example"))
            .unwrap();
        assert_eq!(
            config_error(tls.validate("pushgateway.tls_config", Some("other.example"))),
            "pushgateway.tls_config.server_name: \"h.example\" differs from the URL's host; \
             only the URL's host is supported"
        );
    }

    #[test]
    fn a_credential_file_loses_one_trailing_newline_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n\n").unwrap();
        assert_eq!(
            read_credential(&path, "x.bearer_token_file")
                .unwrap()
                .expose(),
            "s3cret\n"
        );
        let missing = dir.path().join("missing");
        let err = read_credential(&missing, "x.bearer_token_file")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "reading x.bearer_token_file {}",
                missing.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let tls = TlsConfig {
            ca_file: Some(path.clone()),
            ..TlsConfig::default()
        };
        let err = client_builder(&tls, "remote_write.tls_config", Duration::from_secs(1), "t")
            .map(drop)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "remote_write.tls_config.ca_file: {} holds no certificate",
                path.display()
            )
        );
    }
}
