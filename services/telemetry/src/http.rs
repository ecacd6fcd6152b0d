//! The `/metrics` HTTP endpoint: HTTP/1.1 on hyper, `GET /metrics` answers the Prometheus text format.
//! Gathering runs the observable instruments' callbacks (consumer lag reads the store), so it runs on the
//! blocking pool, never on an async worker.

use std::convert::Infallible;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::watch;

type Full = http_body_util::Full<hyper::body::Bytes>;

/// Accepts connections until `stop` turns true; each connection is served on its own task.
pub(crate) async fn serve(listener: TcpListener, registry: prometheus::Registry, mut stop: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, registry.clone()));
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics endpoint: connection ended with an error");
            }
        });
    }
}

async fn answer(request: Request<Incoming>, registry: prometheus::Registry) -> Result<Response<Full>, Infallible> {
    let text = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(body.into()));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return Ok(text(StatusCode::NOT_FOUND, "not found: metrics are at /metrics\n".into()));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into()));
    }
    let body = match tokio::task::spawn_blocking(move || render(&registry)).await {
        Ok(body) => body,
        Err(e) => return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, format!("gathering metrics failed: {e}\n"))),
    };
    let mut response = text(StatusCode::OK, body);
    if let Ok(value) = header::HeaderValue::from_str(prometheus::TEXT_FORMAT) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// Gathers every instrument and encodes the Prometheus text format.
pub(crate) fn render(registry: &prometheus::Registry) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// A raw HTTP/1.0 GET of `path` (the whole response, status line first): for tests.
#[cfg(test)]
pub(crate) async fn get_for_test(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await?;
    Ok(out)
}
