//! Throwaway TLS certificates for tests, made with `openssl`: a private CA,
//! a server certificate for `127.0.0.1` and a client certificate (for
//! [`CLIENT_SAN`]), both signed by it.
//!
//! ```no_run
//! let dir = tollgate_testkit::files::temp_dir("tls-example");
//! let files = tollgate_testkit::tls::Certificates::create(&dir);
//! assert!(files.ca.is_file() && files.client_key.is_file());
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

/// The DNS name in the client certificate's subject alternative name.
pub const CLIENT_SAN: &str = "client.tollgate.test";

/// The files [`Certificates::create`] wrote (PEM).
#[derive(Debug, Clone)]
pub struct Certificates {
    /// The CA's certificate: trust it to accept the server (or client).
    pub ca: PathBuf,
    /// The server's certificate (subject alternative name IP 127.0.0.1).
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// A client certificate, for a server that verifies its clients
    /// (subject alternative name DNS [`CLIENT_SAN`]).
    pub client_cert: PathBuf,
    /// The client's private key.
    pub client_key: PathBuf,
}

impl Certificates {
    /// Writes a CA, a server and a client certificate into `dir`, valid
    /// for a day.
    ///
    /// # Panics
    /// When `openssl` is missing (the message says how to install it) or
    /// fails.
    pub fn create(dir: &Path) -> Certificates {
        // Each CA its own subject (named after its directory), so that a
        // certificate of one is an unknown issuer to another.
        let ca_subject = format!(
            "/CN=tollgate test CA {}",
            dir.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        );
        openssl(
            dir,
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
                "1",
                "-subj",
                &ca_subject,
            ],
        );
        // Extensions make both X.509 v3 (webpki refuses v1 certificates).
        for (file, text) in [
            ("server.ext", "subjectAltName=IP:127.0.0.1\n".to_owned()),
            (
                "client.ext",
                format!("extendedKeyUsage=clientAuth\nsubjectAltName=DNS:{CLIENT_SAN}\n"),
            ),
        ] {
            std::fs::write(dir.join(file), text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", dir.display()));
        }
        for (name, subject) in [
            ("server", "/CN=127.0.0.1"),
            ("client", "/CN=tollgate test client"),
        ] {
            sign(dir, name, subject);
        }
        Certificates {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }

    /// Another certificate signed by this CA, in the CA's directory:
    /// `<file>.crt` (its path is returned) and `<file>.key`, with `subject`
    /// and the `extensions` (openssl's extension file syntax, e.g.
    /// `subjectAltName=DNS:a.test\n`).
    ///
    /// # Panics
    /// As [`create`](Self::create).
    pub fn sign_client(&self, file: &str, subject: &str, extensions: &str) -> PathBuf {
        let dir = self.ca.parent().unwrap_or(Path::new("."));
        std::fs::write(dir.join(format!("{file}.ext")), extensions)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", dir.display()));
        sign(dir, file, subject);
        dir.join(format!("{file}.crt"))
    }

    /// `redis-server` arguments for TLS on `port` with these files; with
    /// `verify_clients`, a client must present a certificate the CA signed.
    pub fn redis_args(&self, port: u16, verify_clients: bool) -> Vec<String> {
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        vec![
            "--tls-port".to_owned(),
            port.to_string(),
            "--tls-cert-file".to_owned(),
            path(&self.server_cert),
            "--tls-key-file".to_owned(),
            path(&self.server_key),
            "--tls-ca-cert-file".to_owned(),
            path(&self.ca),
            "--tls-auth-clients".to_owned(),
            if verify_clients { "yes" } else { "no" }.to_owned(),
        ]
    }
}

/// Makes `<name>.key` and `<name>.crt` in `dir` for `subject`, signed by
/// `ca.crt`/`ca.key` there, with the extensions in `<name>.ext`.
fn sign(dir: &Path, name: &str, subject: &str) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let crt = format!("{name}.crt");
    let extensions = format!("{name}.ext");
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "1",
            "-extfile",
            &extensions,
        ],
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl: {e}; install it with `apt-get install openssl`")
        });
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
