//! The hub's built-in Event Hubs-compatible endpoint: receiver links on
//! `{hub}/ConsumerGroups/{group}/Partitions/{p}` with the Event Hubs start filters, and the
//! `$management` READ operations the SDKs use for the hub and partition properties. The events
//! are the telemetry log's (see `store::eventhub` for the partitioning and numbering).

use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::watch;

use crate::HubError;
use crate::hub::Hub;
use crate::store::eventhub::{Index, PartitionInfo, Position, partition_info, start_of};

mod filter;
pub(crate) mod management;
mod message;
pub(crate) mod receiver;

pub(crate) use filter::position;

/// The consumer group every Event Hub has.
pub(crate) const DEFAULT_GROUP: &str = "$Default";

/// The endpoint's configuration and its numbering of the log.
#[derive(Debug)]
pub(crate) struct EventHub {
    /// The Event Hub name (`EntityPath`): the hub name.
    pub name: String,
    pub partitions: u32,
    /// The AMQPS listener's port, if it has one.
    pub amqps_port: Option<u16>,
    groups: Vec<String>,
    /// When this endpoint came up (reported as `created_at`), Unix milliseconds.
    pub created_ms: i64,
    /// Opened by the first user (the indexer or a reader) on the store's connection.
    index: Arc<Mutex<Option<Index>>>,
    /// Changes whenever new messages were numbered.
    indexed: watch::Sender<u64>,
    /// Whether device telemetry is routed here (`HubConfig::routes`).
    telemetry: bool,
}

impl EventHub {
    /// `amqps_port`: where the endpoint is served with TLS (`/messages/events` redirects
    /// there).
    pub fn new(hub: &Hub, amqps_port: Option<u16>) -> EventHub {
        let mut groups = vec![DEFAULT_GROUP.to_string()];
        for g in &hub.cfg.consumer_groups {
            if !groups.iter().any(|h| h.eq_ignore_ascii_case(g)) {
                groups.push(g.clone());
            }
        }
        EventHub {
            name: super::address::hub_name(&hub.cfg.hostname).to_string(),
            partitions: hub.cfg.partitions.max(1),
            amqps_port,
            groups,
            created_ms: hub.now_ms(),
            index: Arc::new(Mutex::new(None)),
            telemetry: hub.cfg.routes.telemetry,
            indexed: watch::channel(0).0,
        }
    }

    /// Whether `group` is one of the consumer groups (names compare ignoring case).
    pub fn has_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g.eq_ignore_ascii_case(group))
    }

    /// `{name}/ConsumerGroups/{group}/Partitions/{p}` -> `Some(Ok((group, p)))`; an address of
    /// another shape -> `None`; the right shape with an unknown group or partition ->
    /// `Some(Err(why))`.
    pub fn partition_address<'a>(&self, path: &'a str) -> Option<Result<(&'a str, u32), String>> {
        let mut it = path.split('/');
        let (entity, cg, group, ps, p, end) = (
            it.next()?,
            it.next()?,
            it.next()?,
            it.next()?,
            it.next()?,
            it.next(),
        );
        if end.is_some()
            || !cg.eq_ignore_ascii_case("ConsumerGroups")
            || !ps.eq_ignore_ascii_case("Partitions")
        {
            return None;
        }
        let untrusted = crate::untrusted::Untrusted;
        if !entity.eq_ignore_ascii_case(&self.name) {
            return Some(Err(format!(
                "no Event Hub '{}' (this hub's is '{}')",
                untrusted(entity),
                self.name
            )));
        }
        if !self.has_group(group) {
            return Some(Err(format!(
                "no consumer group '{}' (start the hub with --consumer-group to create one)",
                untrusted(group)
            )));
        }
        match p.parse::<u32>() {
            Ok(n) if n < self.partitions && p == n.to_string() => Some(Ok((group, n))),
            _ => Some(Err(format!(
                "no partition '{}' (partitions 0 to {})",
                untrusted(p),
                self.partitions - 1
            ))),
        }
    }

    /// Run `f` with the index caught up with the log (opening it on first use); tells the
    /// readers when new messages were numbered.
    fn with_index<T>(
        &self,
        c: &mut Connection,
        f: impl FnOnce(&Connection, &Index) -> Result<T, HubError>,
    ) -> Result<T, HubError> {
        let mut guard = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let index = Index::open(c, self.partitions)?;
            *guard = Some(if self.telemetry {
                index
            } else {
                index.without_telemetry()
            });
        }
        let Some(index) = guard.as_mut() else {
            return Err(HubError::Store("event hub index not open".into()));
        };
        if index.catch_up(c)? {
            self.indexed.send_modify(|n| *n = n.wrapping_add(1));
        }
        f(c, index)
    }

    /// Number new log messages after each commit, until the hub stops.
    pub async fn run_indexer(self: Arc<Self>, hub: Arc<Hub>) {
        let mut committed = hub.store.events_committed();
        let mut shutdown = hub.shutdown.subscribe();
        loop {
            committed.borrow_and_update();
            let eh = self.clone();
            if let Err(e) = hub
                .store
                .call(move |c| eh.with_index(c, |_, _| Ok(())))
                .await
            {
                tracing::warn!(error = %e, "event hub: numbering the telemetry log failed");
            }
            tokio::select! {
                r = committed.changed() => if r.is_err() { return },
                () = crate::hub::until_shutdown(&mut shutdown) => return,
            }
        }
    }

    /// Changes whenever new messages were numbered.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.indexed.subscribe()
    }

    /// The first sequence number of `part` a receiver starting at `pos` gets.
    pub async fn start(
        self: &Arc<Self>,
        hub: &Hub,
        part: u32,
        pos: Position,
    ) -> Result<i64, HubError> {
        let eh = self.clone();
        hub.store
            .call(move |c| eh.with_index(c, |c, idx| start_of(c, part, pos, idx.next_of(part))))
            .await
    }

    /// The retained range of `part`.
    pub async fn partition_info(
        self: &Arc<Self>,
        hub: &Hub,
        part: u32,
    ) -> Result<PartitionInfo, HubError> {
        let eh = self.clone();
        hub.store
            .call(move |c| eh.with_index(c, |c, idx| partition_info(c, part, idx.next_of(part))))
            .await
    }
}
