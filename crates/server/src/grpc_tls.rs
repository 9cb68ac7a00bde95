//! TLS on the gRPC port (`server.grpc_tls`), handshaken here rather than by
//! tonic, for what envoyproxy/ratelimit does and tonic's own TLS cannot:
//!
//! - **Certificates reloaded.** The certificate and key files are read
//!   at every `watch_interval`, as the configuration files are, and
//!   contents that changed are loaded once two checks in a row find them
//!   the same (a rotation writes two files): each new connection gets the
//!   current pair, open connections keep theirs. A pair that does not load
//!   (a file missing, a key that does not match) is logged, once until the
//!   failure or the contents change, and the previous one kept, so a
//!   rotation can never leave the port without a certificate.
//! - **`client_san`** (envoyproxy/ratelimit's `GRPC_CLIENT_TLS_SAN`): with
//!   `client_ca`, a client certificate that chains to the CA is accepted
//!   only when it is also valid for one name, checked in the handshake as
//!   rustls checks a server's name: subject alternative names only (the
//!   common name is never read), a DNS name in any case, a `*.` wildcard
//!   in the certificate matching one label, or an IP address. Any other
//!   client fails the handshake, as there; a refusal is logged at most
//!   once a second.
//!
//! Each accepted connection is handshaken in a task of its own, bounded by
//! the connection's header timeout (and by its slot, one of
//! `max_connections`), so a client that never finishes its handshake holds
//! nothing else up. ALPN offers `h2` only, as tonic's TLS does.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::config::{GrpcTlsSettings, read_tls_file};
use crate::conn::Watched;
use crate::grpc_calls::GrpcConnectInfo;
use crate::reload::Settle;

/// `client_san` as a name to check certificates for: a DNS name or an IP
/// address, an IPv6 one with or without brackets (`[::1]`).
///
/// # Errors
/// Anything else (a wildcard, spaces, an empty name), saying so.
pub(crate) fn client_name(text: &str) -> Result<ServerName<'static>, String> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    ServerName::try_from(bare.to_owned()).map_err(|_| {
        format!("client_san `{text}` is not a DNS name or an IP address (a wildcard is not a name)")
    })
}

/// The gRPC port's TLS: what handshakes a connection, and the pair it
/// serves.
#[derive(Clone)]
pub(crate) struct GrpcTls {
    acceptor: TlsAcceptor,
    pair: Arc<Pair>,
}

impl std::fmt::Debug for GrpcTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTls")
            .field("cert", &self.pair.cert)
            .finish_non_exhaustive()
    }
}

impl GrpcTls {
    /// Reads the files and builds the handshake's configuration.
    ///
    /// # Errors
    /// A file that cannot be read or is not a PEM certificate chain, key or
    /// CA; a key that does not match the certificate; a `client_san` that
    /// is not a name. The message names the file.
    pub(crate) fn new(settings: &GrpcTlsSettings) -> Result<GrpcTls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = Arc::new(Pair::load(
            &settings.cert,
            &settings.key,
            Arc::clone(&provider),
        )?);
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?;
        let builder = match &settings.client_ca {
            Some(path) => {
                // As tonic's and Go's: certificates that do not parse are
                // skipped (and counted), not the bundle refused.
                let mut roots = RootCertStore::empty();
                let (added, skipped) =
                    roots.add_parsable_certificates(certificates(path, "client_ca")?);
                if added == 0 {
                    return Err(format!(
                        "client_ca {}: no usable CA certificate in it",
                        path.display()
                    ));
                }
                if skipped > 0 {
                    tracing::warn!(path = %path.display(), skipped, "client_ca: certificates that do not parse are skipped");
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| format!("client_ca {}: {e}", path.display()))?;
                let name = settings
                    .client_san
                    .as_deref()
                    .map(client_name)
                    .transpose()?;
                builder.with_client_cert_verifier(Arc::new(NamedClients {
                    inner: verifier,
                    name,
                    logged: AtomicU64::new(0),
                }))
            }
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(&pair) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(GrpcTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            pair,
        })
    }

    /// Handshakes `io`.
    ///
    /// # Errors
    /// The handshake's failure (the client's certificate refused among
    /// them).
    pub(crate) async fn accept(&self, io: Watched) -> io::Result<TlsStream<Watched>> {
        // The handshake and the HTTP/2 preface inside it are timed
        // together: a client trickling either is cut at `header_timeout`.
        io.activity().count_preface_above();
        self.acceptor.accept(io).await
    }

    /// One check of the certificate and key files (see the module's
    /// documentation): changed contents are served from the next
    /// connection on once a second check finds them the same; a pair that
    /// does not load is logged and the current one kept.
    pub(crate) fn reload_if_changed(&self) {
        self.pair.reload_if_changed();
    }
}

/// The certificate and key served, and the file contents they came from.
#[derive(Debug)]
struct Pair {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Arc<CertifiedKey>, Vec<u8>, Vec<u8>)>,
    /// Changed contents seen once, loaded when the next check finds them
    /// again (a rotation is written in steps), and the last failure
    /// logged, so that a broken pair is logged once, not at every check.
    changing: Mutex<Changing>,
}

#[derive(Debug, Default)]
struct Changing {
    seen: Settle<(Vec<u8>, Vec<u8>)>,
    /// The failure last logged, with a hash of the contents that gave it
    /// (two different bad rotations can fail with the same words).
    logged: Option<(String, u64)>,
}

impl Pair {
    fn load(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Pair, String> {
        let (cert_pem, key_pem) = (read(cert, "cert")?, read(key, "key")?);
        let certified = certified(&cert_pem, &key_pem, cert, key, &provider)?;
        Ok(Pair {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new((Arc::new(certified), cert_pem, key_pem)),
            changing: Mutex::new(Changing::default()),
        })
    }

    /// One check: the files are read; contents that differ from those
    /// served are loaded when the next check finds them unchanged; a pair
    /// that does not load is logged (once until the failure changes) and
    /// the current one kept.
    fn reload_if_changed(&self) {
        let mut changing = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let read_both = read(&self.cert, "cert").and_then(|c| Ok((c, read(&self.key, "key")?)));
        let (cert_pem, key_pem) = match read_both {
            Ok(both) => both,
            Err(error) => {
                changing.seen.forget();
                Self::log_once(&mut changing, error, 0);
                return;
            }
        };
        {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            if current.1 == cert_pem && current.2 == key_pem {
                changing.seen.forget();
                if changing.logged.take().is_some() {
                    tracing::info!(cert = %self.cert.display(), "gRPC TLS: the served certificate's files are back");
                }
                return;
            }
        }
        let Some((cert_pem, key_pem)) = changing.seen.settled((cert_pem, key_pem)) else {
            return;
        };
        match certified(&cert_pem, &key_pem, &self.cert, &self.key, &self.provider) {
            Ok(certified) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    (Arc::new(certified), cert_pem, key_pem);
                changing.logged = None;
                tracing::info!(cert = %self.cert.display(), "gRPC TLS: certificate reloaded");
            }
            Err(error) => {
                let contents = {
                    use std::hash::{Hash, Hasher};
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    cert_pem.hash(&mut hasher);
                    key_pem.hash(&mut hasher);
                    hasher.finish()
                };
                Self::log_once(&mut changing, error, contents);
            }
        }
    }

    /// Logs a failure unless it is the one last logged, for the same
    /// contents.
    fn log_once(changing: &mut Changing, error: String, contents: u64) {
        let failure = (error, contents);
        if changing.logged.as_ref() != Some(&failure) {
            tracing::error!(error = %failure.0, "gRPC TLS: the certificate and key on disk do not load; still serving the previous pair");
            changing.logged = Some(failure);
        }
    }
}

impl ResolvesServerCert for Pair {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .0,
        ))
    }
}

fn read(path: &Path, name: &str) -> Result<Vec<u8>, String> {
    read_tls_file(path).map_err(|e| format!("{name} {}: {e}", path.display()))
}

fn certificates(path: &Path, name: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    chain(&read(path, name)?, path, name)
}

/// The PEM certificates in `pem` (the file `path`, `name` in messages): at
/// least one.
fn chain(pem: &[u8], path: &Path, name: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{name} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{name} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The pair from the files' contents.
fn certified(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = chain(cert_pem, cert, "cert")?;
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("key {}: no PEM private key in it", key.display())
        }
        e => format!("key {}: {e}", key.display()),
    })?;
    CertifiedKey::from_der(chain, private, provider)
        .map_err(|e| format!("key {} for cert {}: {e}", key.display(), cert.display()))
}

/// The CA's verifier, and with `client_san` the name check after it.
#[derive(Debug)]
struct NamedClients {
    inner: Arc<dyn ClientCertVerifier>,
    name: Option<ServerName<'static>>,
    /// Milliseconds since [`epoch`] of the last refusal logged, plus one
    /// (0: none yet).
    logged: AtomicU64,
}

impl NamedClients {
    /// A warning, at most once a second: a refused client connecting again
    /// and again cannot flood the log.
    fn log_refusal(&self, name: &ServerName<'_>) {
        let now = u64::try_from(epoch().elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        let last = self.logged.load(Ordering::Relaxed);
        if (last != 0 && now.saturating_sub(last) < 1000)
            || self
                .logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        tracing::warn!(
            name = name.to_str().as_ref(),
            "gRPC TLS: a client certificate the CA signed is not valid for client_san; handshake refused (at most one such line a second)"
        );
    }
}

impl ClientCertVerifier for NamedClients {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(name) = &self.name {
            let valid = ParsedCertificate::try_from(end_entity)
                .and_then(|cert| rustls::client::verify_server_name(&cert, name));
            if let Err(error) = valid {
                self.log_refusal(name);
                return Err(error);
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The instant refusal times count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A gRPC connection as tonic receives it: plaintext, or handshaken here.
#[derive(Debug)]
pub(crate) enum GrpcIo {
    /// `server.grpc_tls` unset.
    Plain(Watched),
    /// Over TLS.
    Tls(Box<TlsStream<Watched>>),
}

impl Connected for GrpcIo {
    type ConnectInfo = GrpcConnectInfo;

    fn connect_info(&self) -> GrpcConnectInfo {
        match self {
            GrpcIo::Plain(io) => io.connect_info(),
            GrpcIo::Tls(io) => io.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for GrpcIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            GrpcIo::Tls(io) => {
                let before = buf.filled().len();
                let result = Pin::new(io.as_mut()).poll_read(cx, buf);
                if buf.filled().len() > before {
                    io.get_ref()
                        .0
                        .activity()
                        .decrypted(buf.filled().len() - before);
                }
                result
            }
        }
    }
}

impl AsyncWrite for GrpcIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            GrpcIo::Plain(io) => Pin::new(io).poll_write(cx, buf),
            GrpcIo::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            GrpcIo::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            GrpcIo::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            GrpcIo::Plain(io) => io.is_write_vectored(),
            GrpcIo::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcIo::Plain(io) => Pin::new(io).poll_flush(cx),
            GrpcIo::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            GrpcIo::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use tollgate_testkit::tls::Certificates;

    use super::*;

    #[test]
    fn names_are_dns_names_or_ip_addresses() {
        assert!(client_name("envoy.internal").is_ok());
        assert!(client_name("10.0.0.1").is_ok());
        assert!(client_name("::1").is_ok());
        assert!(client_name("[::1]").is_ok());
        for bad in ["*.example.com", "not a name", "", "[]"] {
            let error = client_name(bad).unwrap_err();
            assert!(
                error.contains("is not a DNS name or an IP address"),
                "{error}"
            );
        }
    }

    /// Certificates made by openssl, checked as the handshake checks them:
    /// subject alternative names only, wildcards one label deep, any case,
    /// IP addresses by value.
    #[test]
    fn a_certificate_is_valid_for_its_subject_alternative_names_only() {
        let dir = tollgate_testkit::files::temp_dir("client-san-names");
        let ca = Certificates::create(&dir);
        let make = |file: &str, subject: &str, extensions: &str| {
            let path = ca.sign_client(file, subject, extensions);
            CertificateDer::from_pem_file(&path).unwrap()
        };
        let dns = make(
            "dns",
            "/CN=ignored",
            "subjectAltName=DNS:Envoy.Internal,DNS:*.mesh.test\n",
        );
        let ip = make("ip", "/CN=ignored", "subjectAltName=IP:10.0.0.2,IP:::1\n");
        let common_name_only = make("cn", "/CN=envoy.internal", "extendedKeyUsage=clientAuth\n");
        let valid = |cert: &CertificateDer<'_>, name: &str| {
            let parsed = ParsedCertificate::try_from(cert).unwrap();
            rustls::client::verify_server_name(&parsed, &client_name(name).unwrap()).is_ok()
        };
        assert!(valid(&dns, "envoy.internal"), "any case");
        assert!(valid(&dns, "a.mesh.test"), "one label of a wildcard");
        assert!(!valid(&dns, "mesh.test"), "a wildcard needs its label");
        assert!(!valid(&dns, "a.b.mesh.test"), "a wildcard is one label");
        assert!(!valid(&dns, "other.internal"));
        assert!(valid(&ip, "10.0.0.2"));
        assert!(valid(&ip, "[::1]"));
        assert!(!valid(&ip, "10.0.0.3"));
        assert!(!valid(&dns, "10.0.0.2"), "a DNS name is not an IP address");
        assert!(
            !valid(&common_name_only, "envoy.internal"),
            "the common name is never read"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A pair that does not load leaves the current one served; a good
    /// one replaces it.
    #[test]
    fn a_changed_pair_is_served_only_once_it_loads() {
        let dir = tollgate_testkit::files::temp_dir("grpc-tls-reload");
        let (ours, other) = (dir.join("ours"), dir.join("other"));
        std::fs::create_dir_all(&ours).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let (ours, other) = (Certificates::create(&ours), Certificates::create(&other));
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::copy(&ours.server_cert, &cert).unwrap();
        std::fs::copy(&ours.server_key, &key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = Pair::load(&cert, &key, provider).unwrap();
        let served = |pair: &Pair| pair.current.read().unwrap().0.cert[0].clone();
        let first = served(&pair);
        let twice = |pair: &Pair| {
            pair.reload_if_changed();
            pair.reload_if_changed();
        };
        let logged = |pair: &Pair| pair.changing.lock().unwrap().logged.clone();
        // Half a rotation: the new certificate with the old key.
        std::fs::copy(&other.server_cert, &cert).unwrap();
        twice(&pair);
        assert_eq!(
            served(&pair),
            first,
            "a key that does not match is not served"
        );
        let mismatch = logged(&pair).expect("the mismatch is logged");
        std::fs::write(&key, "not a key").unwrap();
        twice(&pair);
        assert_eq!(served(&pair), first, "a broken file is not served");
        let broken = logged(&pair).expect("logged");
        assert!(broken.0.contains("no PEM private key"), "{broken:?}");
        assert_ne!(broken, mismatch, "a new failure is logged anew");
        std::fs::remove_file(&key).unwrap();
        twice(&pair);
        assert_eq!(served(&pair), first, "a missing file is not served");
        std::fs::copy(&other.server_key, &key).unwrap();
        pair.reload_if_changed();
        assert_eq!(
            served(&pair),
            first,
            "changed contents wait for a second look"
        );
        pair.reload_if_changed();
        assert_eq!(
            served(&pair),
            CertificateDer::from_pem_file(&other.server_cert).unwrap()
        );
        assert_eq!(logged(&pair), None, "a reload clears the failure");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
