//! The admission listener: TLS on every connection (handshake bounded in time), HTTP/1.1 and
//! HTTP/2, bounded connections, and a graceful drain on shutdown.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;

use admin::Admin;

use crate::service::App;

/// Limits that protect the server from slow or numerous clients.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub shutdown_timeout: Duration,
}

/// Serves admissions on `listener` until `shutdown` completes, then drains in-flight requests
/// for up to `limits.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Arc<App>,
    admin: Arc<Admin>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    admin.ready.store(true, Ordering::Relaxed);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = connections.clone().acquire_owned() => permit.context("connection limiter closed")?,
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
        };
        // Responses are small and latency matters: do not let Nagle hold their last segment.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
        }
        let (acceptor, app, limits) = (acceptor.clone(), app.clone(), limits.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            // The first request must arrive within the header timeout: hyper's own timer only
            // starts once the protocol is known, and `auto` waits for the client's first
            // bytes without a limit, so a client that sends nothing would keep its slot.
            let first_request = Arc::new(tokio::sync::Notify::new());
            let started = first_request.clone();
            let service = service_fn(move |request| {
                started.notify_one();
                crate::service::handle(app.clone(), request)
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(20)))
                .max_concurrent_streams(64);
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            let connection = watcher.watch(connection.into_owned());
            let silent = async {
                if tokio::time::timeout(limits.header_read_timeout, first_request.notified())
                    .await
                    .is_ok()
                {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                served = connection => if let Err(e) = served {
                    tracing::debug!(%peer, "connection ended: {e}");
                },
                () = silent => tracing::debug!(%peer, "no request within the header timeout; closing"),
            }
        });
    }
    admin.ready.store(false, Ordering::Relaxed);
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {:?}; closing them",
            limits.shutdown_timeout
        );
    }
    Ok(())
}

/// Binds a TCP listener with a message that names the flags to fix.
pub async fn bind(address: SocketAddr, flags: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (see {flags})"))
}
