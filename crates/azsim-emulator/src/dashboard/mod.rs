//! The web dashboard (`azsim hub --dashboard-port`): a page that shows and drives the hub's
//! devices, served from the hub process. Not part of Azure.
//!
//! The page is presentation only: its assets (HTML, CSS, JS and the vendored uPlot chart
//! library, `crates/azsim-emulator/dashboard/`) are compiled into the binary, and every action
//! it takes is a call to the hub's own REST router, which this listener bridges in-process
//! under `/api/...` (see [`bridge`]). On loopback it is plain HTTP and the bridge signs each
//! call with the owner key itself, so a browser on this machine needs nothing; on any other
//! address it is served over the hub's TLS and every call must carry the caller's own
//! `iothubowner` token (the page asks for it once and keeps it in `sessionStorage`).
//!
//! What guards the bridge from other web pages the browser has open: the `Host` header must
//! name this listener (a DNS-rebinding page sends its own name), a state-changing request's
//! `Origin` must be the dashboard's own, and a request the browser marks `Sec-Fetch-Site:
//! cross-site` is refused. See [`guard`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::hub::{Hub, LiveGuard};
use crate::listen::{Admitted, Gate};
use crate::{DashboardPort, HubInfo};

mod bridge;
mod guard;

/// A bound dashboard listener, not yet serving.
pub(crate) struct Dashboard {
    listener: TcpListener,
    /// The hub's TLS when bound beyond loopback; `None` serves plain HTTP.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// What a browser opens: `http://localhost:PORT/` or `https://HOSTNAME:PORT/`.
    pub url: String,
}

impl Dashboard {
    /// Bind `ip` on the port `which` asks for; `None` when it asks for none. A loopback `ip`
    /// serves plain HTTP; any other serves `tls` (the hub's server certificate).
    ///
    /// # Errors
    /// The bind failure (a port in use, unless the port was only preferred).
    pub async fn bind(
        which: DashboardPort,
        ip: IpAddr,
        hostname: &str,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Option<Dashboard>> {
        let listener = match which {
            DashboardPort::Off => return Ok(None),
            DashboardPort::Port(port) => TcpListener::bind(SocketAddr::new(ip, port)).await?,
            DashboardPort::Preferred(port) => {
                match TcpListener::bind(SocketAddr::new(ip, port)).await {
                    Ok(l) => l,
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        tracing::warn!(port, "dashboard port in use; serving it on a free port");
                        TcpListener::bind(SocketAddr::new(ip, 0)).await?
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let port = listener.local_addr()?.port();
        let (tls, url) = if ip.is_loopback() {
            (None, format!("http://localhost:{port}/"))
        } else {
            (Some(tls), format!("https://{hostname}:{port}/"))
        };
        Ok(Some(Dashboard { listener, tls, url }))
    }

    /// Serve until aborted (the hub aborts it at shutdown).
    pub async fn serve(self, hub: Arc<Hub>, info: HubInfo, ca_pem: String) {
        let port = self.listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let ip = self
            .listener
            .local_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let ctx = Arc::new(bridge::Ctx {
            api: crate::rest::router(hub.clone()),
            hub: hub.clone(),
            info,
            ca_pem,
            loopback: self.tls.is_none(),
            allowed_hosts: guard::allowed_hosts(ip, port, &hub.cfg.hostname),
        });
        let app = router(ctx);
        let acceptor = self.tls.map(TlsAcceptor::from);
        let mut gate = Gate::new(
            self.listener,
            "dashboard",
            hub.cfg.limits.max_pre_auth_connections,
        );
        loop {
            let Admitted { tcp, peer, permit } = gate.next().await;
            let (app, hub, acceptor) = (app.clone(), hub.clone(), acceptor.clone());
            tokio::spawn(async move {
                let mut shutdown = hub.shutdown.subscribe();
                let _live = LiveGuard::new(hub.clone());
                let limits = &hub.cfg.limits;
                let svc = TowerToHyperService::new(app);
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.http_header_timeout);
                let served = match acceptor {
                    None => {
                        drop(permit);
                        let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                        tokio::select! {
                            r = conn => r,
                            () = crate::hub::until_shutdown(&mut shutdown) => Ok(()),
                        }
                    }
                    Some(acceptor) => {
                        let deadline = Instant::now() + limits.connect_deadline;
                        let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "dashboard tls handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "dashboard closed: no TLS handshake in time");
                                return;
                            }
                        };
                        drop(permit);
                        let conn = builder.serve_connection(TokioIo::new(tls), svc);
                        tokio::select! {
                            r = conn => r,
                            () = crate::hub::until_shutdown(&mut shutdown) => Ok(()),
                        }
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "dashboard connection ended");
                }
            });
        }
    }
}

/// The page's assets, compiled in: no Node at build time, nothing fetched at run time.
const INDEX_HTML: &str = include_str!("../../dashboard/index.html");
const APP_JS: &str = include_str!("../../dashboard/app.js");
const APP_CSS: &str = include_str!("../../dashboard/app.css");
const UPLOT_JS: &str = include_str!("../../dashboard/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../dashboard/vendor/uplot/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("../../dashboard/vendor/uplot/LICENSE");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = Body::from(body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn router(ctx: Arc<bridge::Ctx>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/assets/uPlot.iife.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", UPLOT_JS) }),
        )
        .route(
            "/assets/uPlot.min.css",
            get(|| async { asset("text/css; charset=utf-8", UPLOT_CSS) }),
        )
        .route(
            "/assets/uPlot.LICENSE.txt",
            get(|| async { asset("text/plain; charset=utf-8", UPLOT_LICENSE) }),
        )
        .route("/hub", get(bridge::hub_info))
        .route("/hub/ca.pem", get(bridge::ca_pem))
        .route(
            "/hub/devices/{id}/connection-string",
            get(bridge::device_connection_string),
        )
        .route("/api/{*path}", axum::routing::any(bridge::forward))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn_with_state(ctx.clone(), guarded))
        .with_state(ctx)
}

/// Every response: refused when [`guard::check`] says so, and never framed, sniffed or cached.
async fn guarded(State(ctx): State<Arc<bridge::Ctx>>, req: Request, next: Next) -> Response {
    let mut r = match guard::check(&req, &ctx.allowed_hosts, ctx.loopback) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            tracing::info!(reason = why, "dashboard request refused");
            (StatusCode::FORBIDDEN, why).into_response()
        }
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}
