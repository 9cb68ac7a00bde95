//! The response body: the inner service's (metered when a reservation is
//! settled from its bytes), or one the layer wrote.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::reserve::Meter;

pin_project! {
    /// The body of a [`RateLimitService`](crate::RateLimitService)
    /// response: the inner service's body, untouched (its data bytes
    /// counted when a [`Reserve`](crate::Reserve) settles from them), or the body of a
    /// response the layer wrote itself (a 429, 400, 401 or 503, or a gRPC
    /// refusal, whose body is empty).
    ///
    /// It implements [`http_body::Body`] with `Bytes` data, so axum
    /// (`IntoResponse`), hyper and tonic accept it as they accept the inner
    /// body.
    #[derive(Debug)]
    pub struct RateLimitBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Metered { #[pin] body: B, meter: Meter },
        Written { data: Option<Bytes> },
    }
}

impl<B> RateLimitBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        RateLimitBody {
            kind: Kind::Inner { body },
        }
    }

    /// The inner body, its bytes counted to settle a reservation.
    pub(crate) fn metered(body: B, meter: Meter) -> Self {
        RateLimitBody {
            kind: Kind::Metered { body, meter },
        }
    }

    pub(crate) fn written(data: Bytes) -> Self {
        let data = (!data.is_empty()).then_some(data);
        RateLimitBody {
            kind: Kind::Written { data },
        }
    }
}

impl<B> Body for RateLimitBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Metered { body, meter } => {
                let polled = body.poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => meter.frame(frame),
                    Poll::Ready(Some(Err(_)) | None) => meter.finish(),
                    Poll::Pending => {}
                }
                polled
            }
            KindProj::Written { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } | Kind::Metered { body, .. } => body.is_end_stream(),
            Kind::Written { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } | Kind::Metered { body, .. } => body.size_hint(),
            Kind::Written { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
