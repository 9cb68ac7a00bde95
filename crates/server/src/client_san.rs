//! `server.grpc_tls.client_san` (envoyproxy/ratelimit's
//! `GRPC_CLIENT_TLS_SAN`): on the gRPC port over mutual TLS, a client
//! whose certificate chains to `client_ca` is served only when the
//! certificate is also valid for one name.
//!
//! rustls verifies the chain in the handshake (tonic's `client_ca_root`);
//! this layer, in front of every gRPC service (the rate limit service and
//! health alike), reads the verified leaf certificate tonic keeps with the
//! connection and checks its subject alternative names for the name, as
//! webpki checks a server's: a DNS name (a `*.` wildcard in the certificate
//! matches one label) or an IP address. A call from any other client is
//! answered `UNAUTHENTICATED` before its message is read.
//! envoyproxy/ratelimit refuses such a client in the handshake instead; to
//! Envoy both are a failed call, which its `failure_mode_deny` decides.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The layer; `None` lets every call through (no `client_san`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientSanLayer(Option<Arc<ServerName<'static>>>);

impl ClientSanLayer {
    /// Checks every call's client certificate for `name`, when given.
    ///
    /// # Errors
    /// A name that is neither a DNS name nor an IP address (the
    /// configuration refuses it first).
    pub(crate) fn new(name: Option<&str>) -> Result<ClientSanLayer, String> {
        let name = name
            .map(|n| {
                ServerName::try_from(n.to_owned())
                    .map_err(|_| format!("client_san `{n}` is not a DNS name or an IP address"))
            })
            .transpose()?;
        Ok(ClientSanLayer(name.map(Arc::new)))
    }
}

impl<S> tower::Layer<S> for ClientSanLayer {
    type Service = ClientSan<S>;

    fn layer(&self, inner: S) -> ClientSan<S> {
        ClientSan {
            inner,
            name: self.0.clone(),
        }
    }
}

/// The service of [`ClientSanLayer`].
#[derive(Debug, Clone)]
pub(crate) struct ClientSan<S> {
    inner: S,
    name: Option<Arc<ServerName<'static>>>,
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
        match &self.name {
            Some(name) if !client_is(&request, name) => {
                let status = tonic::Status::unauthenticated(format!(
                    "the client certificate is not valid for {}",
                    name.to_str()
                ));
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
            CheckedProjection::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

/// Whether the connection's verified client certificate is valid for
/// `name`; no certificate (a connection without TLS) is not.
fn client_is<B>(request: &http::Request<B>, name: &ServerName<'_>) -> bool {
    let Some(certificates) = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
    else {
        return false;
    };
    certificates.first().is_some_and(|leaf| {
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
    })
}
