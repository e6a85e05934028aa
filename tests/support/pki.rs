//! Test support: a throw-away PKI for the TLS tests, made with the `openssl`
//! command in a temp dir that is removed on drop.
//!
//! Include it with `#[path = "support/pki.rs"] mod pki;`. It is self-contained
//! (std and `tempfile` only) so any test binary can take it. Files, by name
//! for [`TestPki::path`]:
//!
//! - `ca.crt`, `ca.key`: a private CA (`CA:TRUE`, may sign certificates);
//! - `server.crt`, `server.key`: a server certificate for IP `127.0.0.1`
//!   (`serverAuth`), signed by the CA;
//! - `client.crt`, `client.key`: a client certificate (`clientAuth`), signed
//!   by the CA, for mutual TLS.
//!
//! Every key is 2048-bit RSA: rustls refuses smaller keys (vcsim's built-in
//! one is 1024-bit). Certificates are valid for two days. A missing `openssl`
//! fails the test with a message saying how to install it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Extensions of the server certificate: what a TLS client (rustls, Go)
/// checks before trusting it for 127.0.0.1.
const SERVER_EXTENSIONS: &str = "subjectAltName=IP:127.0.0.1\n\
    basicConstraints=CA:FALSE\n\
    keyUsage=digitalSignature,keyEncipherment\n\
    extendedKeyUsage=serverAuth\n";
/// Extensions of the client certificate: what a TLS server (Prometheus's
/// `RequireAndVerifyClientCert`) checks before accepting it.
const CLIENT_EXTENSIONS: &str = "basicConstraints=CA:FALSE\n\
    keyUsage=digitalSignature,keyEncipherment\n\
    extendedKeyUsage=clientAuth\n";

/// The CA, server and client certificates and keys, in a temp dir.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// Make a new CA and the two certificates it signs.
    pub fn generate() -> TestPki {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let d = dir.path();
        for (name, extensions) in [("server", SERVER_EXTENSIONS), ("client", CLIENT_EXTENSIONS)] {
            std::fs::write(d.join(format!("{name}.ext")), extensions)
                .expect("the extension file can be written");
        }
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
        );
        for (name, common_name) in [("server", "127.0.0.1"), ("client", "test client")] {
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={common_name}"),
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &format!("{name}.crt"),
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                ],
            );
        }
        TestPki { dir }
    }

    /// The path of one of the files listed in the module comment.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// Run `openssl` in `dir`; any failure fails the test with openssl's stderr.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "openssl is needed for the TLS tests: {e}: install Debian package openssl \
                 (scripts/test.sh does it)"
            )
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
