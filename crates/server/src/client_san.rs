//! `server.grpc_tls.client_san` (envoyproxy/ratelimit's
//! `GRPC_CLIENT_TLS_SAN`): on the gRPC port over mutual TLS, a client
//! whose certificate chains to `client_ca` is served only when the
//! certificate is also valid for one name.
//!
//! rustls verifies the chain in the handshake (tonic's `client_ca_root`);
//! this layer, in front of every gRPC service (the rate limit service and
//! health alike), reads the verified leaf certificate tonic keeps with the
//! connection and checks its subject alternative names for the name, as
//! rustls checks a server's: a DNS name, compared without regard to case,
//! a `*.` wildcard in the certificate matching one label; or an IP
//! address. The subject's common name is never read. A call from any
//! other client is answered `UNAUTHENTICATED` (without the name) before its
//! message is read, and logged at most once a second.
//! envoyproxy/ratelimit refuses such a client in the handshake instead; to
//! Envoy both are a failed call, which its `failure_mode_deny` decides.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use rustls::pki_types::ServerName;
use tonic::transport::server::{Connected, TlsConnectInfo};

use crate::conn::Watched;

/// What tonic keeps with a TLS connection on the gRPC port.
type ConnectInfo = TlsConnectInfo<<Watched as Connected>::ConnectInfo>;

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

/// The layer; without a name it lets every call through (no
/// `client_san`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientSanLayer(Option<Arc<Named>>);

/// The name, and when a refusal was last logged.
#[derive(Debug)]
struct Named {
    name: ServerName<'static>,
    /// Milliseconds since [`epoch`] of the last refusal logged, plus one
    /// (0: none yet).
    logged: AtomicU64,
}

impl ClientSanLayer {
    /// Checks every call's client certificate for `name`, when given.
    ///
    /// # Errors
    /// A name [`client_name`] refuses (the configuration refuses it first).
    pub(crate) fn new(name: Option<&str>) -> Result<ClientSanLayer, String> {
        let named = name
            .map(|n| {
                client_name(n).map(|name| Named {
                    name,
                    logged: AtomicU64::new(0),
                })
            })
            .transpose()?;
        Ok(ClientSanLayer(named.map(Arc::new)))
    }
}

impl<S> tower::Layer<S> for ClientSanLayer {
    type Service = ClientSan<S>;

    fn layer(&self, inner: S) -> ClientSan<S> {
        ClientSan {
            inner,
            named: self.0.clone(),
        }
    }
}

/// The service of [`ClientSanLayer`].
#[derive(Debug, Clone)]
pub(crate) struct ClientSan<S> {
    inner: S,
    named: Option<Arc<Named>>,
}

impl<S, B> tower::Service<http::Request<B>> for ClientSan<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Checked<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match &self.named {
            Some(named) if !client_is(&request, &named.name) => {
                named.log_refusal(&request);
                let status = tonic::Status::unauthenticated(
                    "the client certificate is not valid for the name this server requires",
                );
                Checked::Refused {
                    response: Some(status.into_http()),
                }
            }
            _ => Checked::Served {
                future: self.inner.call(request),
            },
        }
    }
}

impl Named {
    /// A warning naming the peer, at most once a second: a refused client
    /// calling again and again cannot flood the log.
    fn log_refusal<B>(&self, request: &http::Request<B>) {
        let now = epoch()
            .elapsed()
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX - 1)
            + 1;
        let last = self.logged.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < 1000 {
            return;
        }
        if self
            .logged
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let peer = request
            .extensions()
            .get::<ConnectInfo>()
            .and_then(|info| info.get_ref().remote_addr);
        tracing::warn!(
            ?peer,
            name = self.name.to_str().as_ref(),
            "gRPC call refused: the client certificate is not valid for client_san (at most one such line a second)"
        );
    }
}

/// The instant refusal times count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pin_project_lite::pin_project! {
    /// The future of [`ClientSan`]: the service's, or a refusal.
    #[project = CheckedProjection]
    pub(crate) enum Checked<F, R> {
        // The client is who `client_san` names: the service's future.
        Served { #[pin] future: F },
        // Refused: the refusal, until it is taken.
        Refused { response: Option<R> },
    }
}

impl<F, R, E> Future for Checked<F, R>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R, E>> {
        match self.project() {
            CheckedProjection::Served { future } => future.poll(cx),
            // Polled again after it completed: a caller's mistake, which
            // waits forever rather than panic in the server.
            CheckedProjection::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

/// Whether the connection's verified client certificate is valid for
/// `name`; no certificate (no TLS, no client certificate) is not.
fn client_is<B>(request: &http::Request<B>, name: &ServerName<'_>) -> bool {
    let Some(certificates) = request
        .extensions()
        .get::<ConnectInfo>()
        .and_then(TlsConnectInfo::peer_certs)
    else {
        return false;
    };
    certificates
        .first()
        .is_some_and(|leaf| certificate_is(leaf, name))
}

/// Whether a DER certificate is valid for `name` (its subject alternative
/// names only).
fn certificate_is(leaf: &rustls::pki_types::CertificateDer<'_>, name: &ServerName<'_>) -> bool {
    rustls::server::ParsedCertificate::try_from(leaf)
        .is_ok_and(|cert| rustls::client::verify_server_name(&cert, name).is_ok())
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
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

    #[test]
    fn a_call_without_a_client_certificate_is_not_the_client() {
        let name = client_name("envoy.internal").unwrap();
        assert!(!client_is(&http::Request::new(()), &name));
    }

    /// Certificates made by openssl, checked as rustls checks a server's
    /// name: subject alternative names only, wildcards one label deep, any
    /// case, IP addresses by value.
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
            certificate_is(cert, &client_name(name).unwrap())
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
}
