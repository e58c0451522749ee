//! The mutating admission webhook: elected pods become proxy pods (see `docs/webhook.md`).
//!
//! [`mutate`] is the pure rewrite, [`review`] the AdmissionReview protocol around it,
//! [`service`] the HTTP routing, [`tls`] certificates re-read as they rotate, [`server`] the
//! listeners and graceful shutdown; health and metrics are served by the `admin` crate.

pub mod args;
pub mod metrics;
pub mod mutate;
pub mod review;
pub mod server;
pub mod service;
pub mod tls;

use std::{future::Future, sync::Arc};

use anyhow::Context as _;
use rustls::crypto::CryptoProvider;

/// The webhook with its listeners bound, ready to serve.
pub struct Bound {
    listener: tokio::net::TcpListener,
    admin_listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Arc<service::App>,
    admin: Arc<admin::Admin>,
    limits: server::Limits,
}

impl Bound {
    /// Where admissions are served (useful when binding port 0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Where /livez, /readyz and /metrics are served.
    pub fn admin_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.admin_listener.local_addr()
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            listener,
            admin_listener,
            acceptor,
            app,
            admin,
            limits,
        } = self;
        let admin_task = tokio::spawn(admin::serve(admin_listener, admin.clone()));
        let served = server::serve(listener, acceptor, app, admin, limits, shutdown)
            .await
            .context("admission server failed");
        admin_task.abort();
        served
    }
}

/// Validates the certificates, then binds the admission and admin listeners.
pub async fn bind(config: args::Config, provider: Arc<CryptoProvider>) -> anyhow::Result<Bound> {
    let args::Config {
        listen,
        admin: admin_address,
        path,
        tls_cert_file,
        tls_private_key_file,
        settings,
        key,
        excluded_namespaces,
        max_body_bytes,
        max_concurrent_requests,
        limits,
    } = config;
    // Certificates are validated before anything binds: a bad flag fails fast and clearly.
    let certs = Arc::new(tls::ReloadingCert::new(
        tls_cert_file,
        tls_private_key_file,
        provider.clone(),
    )?);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(certs, provider)?));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(metrics::Metrics::register(&mut registry));
    let admin = Arc::new(admin::Admin {
        ready: false.into(),
        registry,
    });
    let app = Arc::new(service::App {
        path,
        settings,
        key,
        exclusions: review::Exclusions {
            namespaces: excluded_namespaces,
        },
        max_body_bytes,
        body_timeout: limits.header_read_timeout,
        metrics,
        cpu_slots: tokio::sync::Semaphore::new(max_concurrent_requests),
    });
    let admin_listener = server::bind(admin_address, "--admin-address").await?;
    let listener = server::bind(listen, "--bind-address, --secure-port").await?;
    tracing::info!(listen = %listener.local_addr()?, admin = %admin_listener.local_addr()?, "serving admissions");
    Ok(Bound {
        listener,
        admin_listener,
        acceptor,
        app,
        admin,
        limits,
    })
}

/// Runs the webhook until `shutdown` completes, then drains.
pub async fn run(
    config: args::Config,
    provider: Arc<CryptoProvider>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    bind(config, provider).await?.serve(shutdown).await
}
