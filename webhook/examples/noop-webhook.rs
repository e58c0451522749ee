//! Benchmark floor: the same hyper + tokio-rustls stack answering every POST with a fixed
//! "allowed" review, after reading the body. `make bench` compares the webhook against it.
//!
//! noop-webhook ADDRESS CERT KEY

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio_rustls::TlsAcceptor;

const ALLOWED: &[u8] =
    br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":true}}"#;

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = request.into_body().collect().await;
    Ok(Response::new(Full::new(Bytes::from_static(ALLOWED))))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [address, cert, key] = args.as_slice() else {
        anyhow::bail!("usage: noop-webhook ADDRESS CERT KEY");
    };
    let certs = Arc::new(webhook::tls::ReloadingCert::new(
        cert.into(),
        key.into(),
        provider.clone(),
    )?);
    let acceptor = TlsAcceptor::from(Arc::new(webhook::tls::server_config(certs, provider)?));
    let listener = tokio::net::TcpListener::bind(address).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service_fn(answer))
                .await;
        });
    }
}
