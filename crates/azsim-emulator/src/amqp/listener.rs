//! The AMQP listeners of a hub: bound before the hub starts (so `hub.json` can name their
//! ports), described in its [`HubInfo`], served once it runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::address::hub_name;
use super::eventhub::EventHub;
use crate::hub::Hub;
use crate::{HubConfig, HubError, HubInfo};

/// The port Azure serves AMQPS on (clients assume it when an endpoint has no port).
pub(crate) const AMQPS_PORT: u16 = 5671;

/// The bound AMQP listeners (either may be off).
#[derive(Debug)]
pub(crate) struct Listeners {
    amqps: Option<TcpListener>,
    dev: Option<TcpListener>,
}

impl Listeners {
    /// Bind `ip:amqp_port` (TLS) and `127.0.0.1:amqp_dev_port` (plain, loopback only: it has
    /// no TLS, so it never listens where another machine could reach it).
    pub async fn bind(cfg: &HubConfig, ip: IpAddr) -> Result<Listeners, HubError> {
        let amqps = match cfg.amqp_port {
            Some(p) => Some(TcpListener::bind(SocketAddr::new(ip, p)).await?),
            None => None,
        };
        let dev = match cfg.amqp_dev_port {
            Some(p) => {
                Some(TcpListener::bind(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), p)).await?)
            }
            None => None,
        };
        Ok(Listeners { amqps, dev })
    }

    /// Fill in the AMQP ports and Event Hubs connection strings of `info`.
    pub fn describe(&self, hub: &Hub, info: &mut HubInfo) -> Result<(), HubError> {
        let port = |l: &Option<TcpListener>| -> Result<Option<u16>, HubError> {
            Ok(match l {
                Some(l) => Some(l.local_addr()?.port()),
                None => None,
            })
        };
        info.amqp_port = port(&self.amqps)?;
        info.amqp_dev_port = port(&self.dev)?;
        let host = &hub.cfg.hostname;
        let key = hub.owner_key.expose();
        let entity = hub_name(host);
        info.eventhub_connection_string = info.amqp_port.map(|p| {
            let endpoint = if p == AMQPS_PORT {
                host.clone()
            } else {
                format!("{host}:{p}")
            };
            format!(
                "Endpoint=sb://{endpoint}/;SharedAccessKeyName=iothubowner;SharedAccessKey={key};EntityPath={entity}"
            )
        });
        info.eventhub_dev_connection_string = info.amqp_dev_port.map(|p| {
            format!(
                "Endpoint=sb://localhost:{p};SharedAccessKeyName=iothubowner;SharedAccessKey={key};EntityPath={entity};UseDevelopmentEmulator=true"
            )
        });
        Ok(())
    }

    /// Serve the listeners (TLS with `tls`, the hub's server config without ALPN).
    pub fn spawn(self, hub: &Arc<Hub>, tls: Arc<rustls::ServerConfig>) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        if self.amqps.is_none() && self.dev.is_none() {
            return tasks;
        }
        let amqps_port = self
            .amqps
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
        let eh = Arc::new(EventHub::new(hub, amqps_port));
        // AMQP over WebSockets (the HTTPS listener) serves the same endpoint.
        let _ = hub.amqp_eventhub.set(eh.clone());
        tasks.push(tokio::spawn(eh.clone().run_indexer(hub.clone())));
        if let Some(l) = self.amqps {
            let acceptor = TlsAcceptor::from(tls);
            tasks.push(tokio::spawn(super::accept_loop(
                hub.clone(),
                eh.clone(),
                l,
                Some(acceptor),
            )));
        }
        if let Some(l) = self.dev {
            tasks.push(tokio::spawn(super::accept_loop(hub.clone(), eh, l, None)));
        }
        tasks
    }
}
