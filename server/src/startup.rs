//! Building and running the server. `launch` takes a listener that is already
//! bound, so callers (the binary, tests, benchmarks) know the address before the
//! server runs and nobody waits for a port.

use std::{net::TcpListener, sync::Arc, time::Duration};

use actix_web::{
    http::header,
    middleware::{Condition, DefaultHeaders, ErrorHandlers},
    web, App, HttpServer,
};
use anyhow::Context as _;
use tracing_actix_web::TracingLogger;

use crate::{
    auth::{load_or_create_secret, AuthService},
    config::Settings,
    http::{self, error::ensure_json_error, AppState},
    shipments::Planner,
    store::Store,
    telemetry::RequestSpan,
    tls,
};

/// A server that is listening.
pub struct Running {
    server: actix_web::dev::Server,
    url: String,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Running {
    /// `https://127.0.0.1:8443` or `http://...`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A handle to stop the server from elsewhere (tests, benchmarks).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT/SIGTERM or a stop through the handle, lets requests in
    /// flight finish, then flushes the store.
    pub async fn until_stopped(self) -> anyhow::Result<()> {
        self.server.await.context("the HTTP server failed")?;
        self.store.flush().await.context("the final flush failed")?;
        tracing::info!("stopped; the store is flushed");
        Ok(())
    }
}

/// Starts serving on `listener`.
pub async fn launch(settings: Settings, store: Arc<dyn Store>, listener: TcpListener) -> anyhow::Result<Running> {
    let secret = load_or_create_secret(&settings.auth, &settings.data_dir)?;
    let auth = AuthService::new(Arc::clone(&store), &settings.auth, &secret).await?;
    let address = listener.local_addr()?;
    let tls_config = if settings.tls.enabled {
        if settings.tls.generate_dev_certs {
            tls::ensure_dev_certs(&settings.certs_dir)?;
        }
        Some(tls::server_config(&settings.certs_dir)?)
    } else {
        tracing::warn!("TLS is off (--http): tokens and passwords cross the network in clear text");
        None
    };
    let limits = settings.limits.clone();
    // The page cookie's key is derived from the token key: one secret to manage.
    let cookie_key = actix_web::cookie::Key::derive_from(&secret);
    let secure_cookies = settings.tls.enabled;
    let planner = Planner::start(Arc::clone(&store));
    let push_limits = http::sync::PushLimits::per_minute(settings.limits.pushes_per_minute_per_device);
    let state = web::Data::new(AppState {
        store: Arc::clone(&store),
        auth,
        settings,
        planner,
        recent_pulls: Default::default(),
        push_limits,
    });

    let app_state = state.clone();
    let server = HttpServer::new(move || {
        let limits = limits.clone();
        let cookie_key = cookie_key.clone();
        // Behind TLS, browsers are told to come back only over TLS for a year.
        let hsts = Condition::new(
            secure_cookies,
            DefaultHeaders::new().add((header::STRICT_TRANSPORT_SECURITY, "max-age=31536000")),
        );
        App::new()
            .app_data(app_state.clone())
            .wrap(ErrorHandlers::new().default_handler(ensure_json_error))
            .wrap(TracingLogger::<RequestSpan>::new())
            // Outermost, so that every answer carries it, error pages included.
            .wrap(hsts)
            .configure(move |cfg| http::routes(cfg, &limits))
            .configure(move |cfg| http::pages(cfg, &cookie_key, secure_cookies))
    })
    .shutdown_timeout(10);
    let (server, scheme) = match tls_config {
        Some(config) => (server.listen_rustls_0_23(listener, config)?, "https"),
        None => (server.listen(listener)?, "http"),
    };
    let server = server.run();

    // Rate-limit memory stays bounded however many usernames are tried.
    let prune_state = state.clone();
    actix_web::rt::spawn(async move {
        let mut tick = actix_web::rt::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            prune_state.auth.prune_rate_limits();
            prune_state.push_limits.prune();
        }
    });

    // Drafts nobody confirmed or that were cancelled are forgotten a day later.
    let purge_store = Arc::clone(&store);
    actix_web::rt::spawn(async move {
        let mut tick = actix_web::rt::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
            match purge_store.purge_drafts(before).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "purged stale drafts"),
                Err(err) => tracing::warn!(error = %err, "purging stale drafts failed"),
            }
        }
    });

    Ok(Running { server, url: format!("{scheme}://{address}"), store })
}
