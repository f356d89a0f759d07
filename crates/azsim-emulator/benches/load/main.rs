//! Load bench: N devices with real SAS tokens over TLS each send M QoS 1 messages, against the
//! azsim hub (in its own process: this binary started again as the hub) and against
//! Debian's `mosquitto` (TLS listener) in the same run, and print msgs/s, PUBACK latency p50/p99
//! and the hub/mosquitto ratio.
//!
//! Not a test: it asserts nothing and prints numbers.
//!
//! ```text
//! cargo bench -p azsim-emulator --bench load -- [--devices N] [--messages M] [--payload BYTES]
//!     [--window W[,W...]] [--connect-concurrency C] [--only hub|mosquitto] [--rounds R] [--no-warmup]
//!     [--store disk|memory] [--sync normal|full] [--tls azure|modern|both]
//!     [--records message|batch]
//! ```
//! Defaults: 1000 devices, 20 messages of 256 bytes each, 1 message in flight per device,
//! 200 TLS handshakes at a time. Env `AZSIM_LOAD_DEVICES` / `AZSIM_LOAD_MESSAGES` override the
//! defaults too. Env `AZSIM_LOAD_HUB_EXE=PATH` runs the hub child from another build of this
//! bench (e.g. one built from an older commit): an A/B of hub changes behind the same clients.
//! Each device is one task of one tokio runtime with its own TLS connection
//! (tokio-rustls), speaking MQTT through a small hand-written client (`device.rs`, the codec is
//! `mqttbytes`): CONNECT, then QoS 1 PUBLISHes with up to W unacknowledged. Whatever the window
//! lets out goes in one write (one TLS record up to 16 KiB), every PUBACK a read brought is
//! handled before the next write, and the PUBLISH is encoded once (only its packet id changes).
//! Both brokers get this same client, doing the same work per message. It replaced `rumqttc`
//! clients, which cost 11.4 us of CPU per message at window 1 (lead's baseline run) and so left
//! the brokers too little of a 2-core machine to tell them apart: mosquitto was client-bound.
//! `--window 1,10,100` measures several windows in one run (each round runs both brokers at
//! each window, with a ratio per window and a summary per window at the end). Devices in the
//! field pipeline QoS 1 (the Python SDK has no in-flight limit; azsim's own loop has
//! `--max-in-flight`), so a window above 1 is a fair measure; window 1 is reported too.
//! Phases: connect everyone (CONNACK), then
//! everyone publishes at once; msgs/s is total messages over the time from the start signal
//! to the last PUBACK. Latency is from the PUBLISH leaving the client to its PUBACK.
//! mosquitto gets the same clients, usernames, SAS passwords and topics (it ignores them:
//! `allow_anonymous true`), with a certificate from the same kind of rcgen CA.
//! `--rounds R` runs the pair R times, alternating which broker goes first, and ends with every
//! ratio and the medians. Before the first measured run, an uncounted warm-up run (5 messages
//! per device, against the hub) grows the client process's heap and socket state, which
//! otherwise costs whichever broker goes first; `--no-warmup` skips it.
//!
//! It also prints the CPU time per message each side used during the publish phase (from
//! `/proc/*/task/*/schedstat`): the broker process's threads (hub or mosquitto; for the hub
//! also its SQLite threads: the telemetry writer, the WAL checkpointer) and the
//! clients'. On a shared, noisy machine msgs/s moves with
//! whatever else runs; CPU per message shows what each broker costs.
//!
//! Memory per connected device is the broker process's RSS (`/proc/PID/status` `VmRSS`) once
//! every device has its CONNACK, minus its RSS just before the first device connected, over the
//! number of devices.
//!
//! `--store disk` (the default, what `azsim hub` does) keeps the hub's state in SQLite files
//! in a temporary directory, so every PUBACK waits for a committed transaction on disk;
//! `--store memory` runs the hub with `in_memory` (SQLite in memory). mosquitto runs with
//! `persistence false` either way (it keeps nothing on disk for QoS 1 messages without
//! subscribers). `--sync normal` runs the hub with `Durability::ProcessCrash` (SQLite
//! `synchronous=NORMAL`: commits survive a killed process, not a power cut) instead of the
//! default `PowerLoss` (`synchronous=FULL`, an fsync per transaction).
//!
//! `--tls` picks the hub's TLS profile (`HubConfig.tls`): `azure` (the default, as `azsim hub`:
//! an RSA-2048 chain over TLS 1.2) or `modern` (one ECDSA P-256 certificate, TLS 1.3);
//! `both` runs the hub once per profile in the same run (modern first), so their memory per
//! device and msgs/s can be compared on the same machine state. mosquitto is unaffected.
//! Measured here (1000 devices, `--only hub --tls both`): both profiles alike, 19.0 KiB
//! (modern) and 18.6 (azure) per device before the accept task boxed its handshake + CONNECT
//! future; 17.4 / 17.7 with only the DPS session boxed inside it; 14.1 / 13.4 with both boxed.
//! The TLS profile is not what costs: the unauthenticated phase's future (TLS accept, CONNECT,
//! X.509 or SAS check, a possible DPS session) sized every connection's task for its life.
//!
//! Ingest against mosquitto (issue 11), `--rounds 3 --messages 200 --window 1,10,100`, 1000
//! TLS devices, disk store with synchronous=FULL, PUBACKs held for the commit; medians of 3
//! rounds (each round's ratios in brackets) on 2 cores shared with other builds (load average
//! 5-7, fsync p50 4 ms, p90 17 ms), so msgs/s are noisy; CPU per message is the steadier figure.
//!
//! ```text
//! client                 window  hub msgs/s  mosq msgs/s  ratio (rounds)        broker us/msg  clients us/msg
//!                                                                               hub / mosq     hub / mosq
//! rumqttc (before)       1        26,310      28,929     0.82x (1.56 0.78 0.82)  12.6 / 7.7     10.2 / 9.5
//!                        10       60,822      32,018     1.84x (1.84 2.97 1.72)   5.2 / 8.0      4.4 / 9.4
//!                        100      73,320      32,775     2.24x (2.24 1.68 2.44)   4.8 / 8.0      2.6 / 8.3
//! lean, record/PUBLISH   1        48,107      68,488     0.63x (0.79 0.63 0.52)  13.2 / 6.5      7.4 / 4.7
//!                        10      128,380      66,917     1.94x (2.26 1.48 1.94)   5.1 / 6.8      1.2 / 4.9
//!                        100     156,915      54,797     1.89x (4.54 1.89 1.71)   4.0 / 9.1      0.7 / 6.2
//! lean, --records batch  1        45,860      60,736     0.71x (0.71 0.85 0.67)  13.7 / 8.1
//!                        10      127,804      85,618     1.51x (1.13 1.51 1.73)   4.9 / 6.7
//!                        100     178,865     192,150     0.93x (1.02 0.93 0.75)   4.0 / 3.2
//! ```
//! The hub's SQLite threads took 2.1-2.5 us of its CPU per message at window 1 and 1.8-2.0 at
//! 10 and 100. Memory per device in these runs: hub 15.5-19.0 KiB, mosquitto 15.7-19.7 KiB
//! (the RSS delta moves by a few KiB with the machine's load; 14.4 / 18.0 on a quiet one).
//! What was over 16 KiB came from the burst of 200 devices connecting at once, but not from
//! the TLS handshakes: glibc's arenas held only ~1 MiB free at the CONNACKs (`malloc_stats`),
//! and a hub-side bound of 4, 8 or 16 handshakes at a time changed nothing (16.1-17.5 KiB
//! against 15.9-18.0 without, alternating). It was the blocking pool: every device's identity
//! lookup is a `Store::call`, all of them wait for the one SQLite connection, and each waiting
//! call held a blocking thread, so the pool grew to ~190 threads whose stacks and arenas stayed
//! resident. `Store::call` now waits for one of 2 places before it takes a thread. And the
//! connection's boxed `Opened` (1.5 KiB) was freed at the connection's end, not at its CONNACK
//! (heaptrack). Together, same machine, alternating: 15.6-16.8 -> 12.6-13.0 KiB per device with
//! `--only hub`; in the 3-round run of both brokers below, hub 12.6-13.3 KiB in all 18 runs,
//! mosquitto 15.4-18.4.
//! What a connection itself holds (heaptrack, ~12 KiB of live heap): its task (3.3 KiB; the
//! future is 2960 bytes in a dev build, 1224 of them the TLS stream;
//! `mqtt::tests::a_connection_s_future_stays_small`), rustls' 4 KiB record buffer (zero-filled,
//! so resident), its 1 KiB read buffer, the record keys (1.1 KiB), its command channel
//! (1.3 KiB) and registry entry.
//! Ingest at a326c76 (`--rounds 3 --messages 200 --window 1,10,100`, load average 4.5-5.5 from
//! other builds): medians 0.68x / 1.60x / 1.76x at windows 1 / 10 / 100 (rounds 0.83 0.68 0.50
//! / 1.60 1.03 1.74 / 1.76 1.60 1.80; hub 62k / 161k / 183k msgs/s), hub CPU 10.5 / 4.4 / 4.0 us
//! per message against mosquitto's 5.4 / 6.0 / 5.6 (mosquitto cheaper than in the table above,
//! same client). On the way, for a few hours of commits: the configurations maintainer held a
//! receiver of the hub's event stream for the hub's life, so every telemetry message had its
//! JSON built and broadcast (`Conn::ingest` builds it only while someone watches); that doubled
//! the hub's CPU per message (window 10: 10.5 us against 5.1 with the subscription left out, same
//! binary; medians 1.25x against 1.97x) until 0f4eab4. Since 91c10da that JSON is written
//! straight into one buffer instead of through a `Value` tree, which cut the doubled cost to
//! 6.8-7.1 us (window 10) and 5.4-6.1 (window 100); it is still built for every message an
//! Event Hubs consumer or the live stream reads.
//! The event log's trim (a range DELETE every 256 rows at the 10,000-row cap) costs 0.6-0.7 us
//! per message of the SQLite writer's 1.8-1.9 (A/B with a cap above the run's 200,000 messages,
//! 3 pairs at windows 10 and 100). Trimming every 4096 rows instead, or a 16 MB page cache so
//! the old pages are not read back, changed it by 0.1-0.2 us at most: the cost is SQLite
//! deleting (and rebalancing) the rows, not the statements.
//! What bounds the ratio, from CPU per message B (broker) and C (clients) on 2 cores: mosquitto
//! is one thread, so its rate is at most min(1/B_m, 2/(B_m + C)); the hub's is at most
//! 2/(B_h + C). At window 1 every PUBLISH costs each broker a read and a PUBACK write, and the
//! hub also two task wake-ups (the read, then the commit) and the SQLite insert: B_h 12-14 us
//! against B_m 6.5-8, so 2.0x would need B_h + C <= B_m / 2 (about 3.5 us, less than the
//! client alone): out of reach at window 1. Above 1 the hub reads many PUBLISHes per read and
//! releases each commit's PUBACKs in one TLS record and one write, while mosquitto reads and
//! writes a record per packet: with a record per PUBLISH (as SDK devices write them) the hub
//! costs 4-5 us against mosquitto's 6.8-9.1, about 2x; when the client packs a whole window
//! into shared records (`--records batch`), mosquitto's reads shrink too (3.2 us at window 100)
//! and the ratio falls below 1.
//! The hub's own changes, A/B behind the same lean client (`AZSIM_LOAD_HUB_EXE` = this bench
//! built at 6ac2992, `--only hub --messages 200 --window 1,10,100`, 3 interleaved pairs): window
//! 1 44.2k -> 53.2k msgs/s median (CPU 12.7 -> 13.0 us, same within noise; no checkpoint inside
//! a commit any more), window 10 125k -> 133k (4.8 -> 5.0 us, noise), window 100 136k -> 139k
//! msgs/s and CPU 4.7 -> 4.1 us per message (one queue operation per read instead of per
//! message). The rest of the gap at window 1 is per-message work both brokers do, plus the
//! hub's second wake-up per message (the commit) and the insert.
//! The event log as a ring of 8 segment tables (`store/segments.rs`), trimmed by emptying the
//! oldest segment whole, A/B against this bench built at 34b361d (`--only hub --messages 200
//! --window 1,10,100`, 3 interleaved pairs, load average 6-11 from other work). The store
//! alone (42c59eb, no connection-side change): the SQLite writer thread 1.7-1.8 -> 1.1-1.3 us
//! per message at windows 10 and 100 (2.1-2.2 -> 1.6-1.9 at window 1), the hub 4.7-4.9 ->
//! 4.3-4.5 us at window 10 and 3.7-3.9 -> 3.3-3.7 at window 100. With 5ec6be3 (the connection
//! side, above) and the page cache below too (f64f95d): writer 1.7-2.0 -> 1.2-1.4, hub
//! 4.7-5.2 -> 4.4-4.8 at window 10 and 4.1-4.4 -> 3.3-3.5 at window 100, msgs/s 99-124k ->
//! 104-131k and 94-136k -> 165-188k. The Event Hubs indexer (it numbers
//! each committed row into `eh_index` after every commit, on the blocking pool, so it is not
//! in the "SQLite threads" figure) took about 0.5 us per message at window 100 (perf: 7 % of
//! the samples against the writer's 14 %); it now inserts 32 rows per statement and reads
//! only the newest segments. With SQLite's default 2 MiB page cache it read pages back from
//! the file (pread) after every commit; a 16 MiB cache took that away. Window 1 gained little
//! if anything: 11.3-16.6 us against 11.3-13.5 in the same pairs, 12.2-13.5 against 12.6-14.0
//! in another set, 10.7-11.9 against 10.3-12.3 on a quieter machine (load average 5; msgs/s
//! 65-100k against 50-58k there); small commits make the indexer's fixed cost per commit
//! count. Letting the indexer's commits skip their fsync (they are derived data) measured the
//! same as keeping it (10.9-12.8 against 10.7-11.9 us), so they keep it. Full run, same command
//! as above (load average 7-11): medians 0.53x / 2.15x / 3.20x at windows 1 / 10 / 100
//! (rounds 1.79 0.46 0.53 / 2.82 2.15 1.31 / 2.61 3.20 3.83; hub 43k / 179k / 193k msgs/s), hub
//! CPU 12.0 / 4.1 / 3.3 us per message against mosquitto's 6.5 / 6.8 / 6.4; memory per device
//! hub 13.1-13.6 KiB, mosquitto 16.3-17.5.
//! The connection side (5ec6be3), A/B behind the same clients (`AZSIM_LOAD_HUB_EXE` = this bench at
//! 34b361d, `--only hub --messages 200 --window 1,10,100`, 9 interleaved pairs, 3 of them before
//! the boxing below, load average 4-12 from other builds): hub CPU per message 4.8-5.4 -> 4.5-4.8
//! us at window 10, 3.7-4.5 -> 3.2-3.6 at window 100, window 1 unchanged (9.2-14.9 against
//! 11.7-15.4: noise); memory per device 12.7-13.1 -> 12.7-13.2 KiB (last 3 pairs). perf of the hub
//! at window 10 had shown a read's handling taking at most 1 KiB (the read buffer) per turn of the
//! connection's `select!`, so a burst of 10 PUBLISHes took 3-4 turns, hand-offs to the writer and
//! boxed futures (1256 bytes: past glibc's thread cache, `unlink_chunk` / `malloc_consolidate`),
//! three clock reads and a broadcast lock (`receiver_count`) per message, and the commit waiter
//! registered and dropped (the `Notify`'s lock) every turn. Now a read's handling goes on with
//! whatever the stream has ready without waiting, reads the clock and the watcher count once per
//! read, keeps one commit waiter, and its future is 944 bytes. The token-expiry and keep-alive
//! timers were already armed once per connection (no timer work per packet).
//! Where the hub's CPU goes at 03aafd8 (with the store's segments, 42c59eb; perf, by thread): at
//! window 10 (3.9 us) the connection tasks 45% (of it 0.55 us in the kernel, TLS ~0.3), the
//! telemetry writer 24%, the Event Hubs indexer 26% (it numbers the new rows after every commit on
//! the blocking pool, so it is not in "its SQLite threads"), the checkpointer 4%; at window 1 (12.8
//! us) the connection tasks 66% (the kernel 4.4 us: recv, writev, epoll; tokio's two wake-ups 1.3,
//! TLS 1.0), the indexer 21% (2.7 us: small commits, each one indexed), the writer 12%. Window 1's
//! bound holds with these numbers: the hub's clients alone cost 6.2-6.7 us per message and its
//! connection tasks' kernel time 4.4, against mosquitto's whole 6.6-8.3 us, so B_h + C <= B_m is
//! out of reach even at no user-space cost. Window 1 is also latency-bound: msgs/s is about devices
//! / PUBACK p50 (17-44 ms: the group commit and its fsync), and in the same minute `--store memory`
//! ran 42-45k msgs/s against 16-19k with `--sync full` (load average 10).
//! Against mosquitto at 03aafd8 (`--rounds 3 --messages 200 --window 1,10,100`, load average 8-10):
//! medians 0.66x / 2.27x / 3.50x (rounds 0.42 0.75 0.66 / 2.06 2.41 2.27 / 2.44 3.50 7.06), hub CPU
//! 13.6 / 3.9 / 2.7 us per message against mosquitto's 7.9 / 7.6 / 8.7, memory per device 12.7-13.3
//! KiB against 15.6-20.0.

mod brokers;
#[path = "../common/mod.rs"]
mod common;
mod device;
mod hub;
mod proc;

use brokers::*;
use common::{client_tls, free_port};
use device::*;
use proc::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use azsim_emulator::clock::unix_now;
use azsim_proto::sas;
use azsim_proto::topic::{self, Identity};
use tokio::sync::{Barrier, Semaphore};

#[derive(Debug, Clone)]
struct Params {
    devices: usize,
    messages: usize,
    payload: usize,
    /// Unacknowledged PUBLISHes per device in the run at hand (one of `windows`).
    window: u16,
    /// Every window to measure (`--window 1,10,100`): each round runs both brokers at each.
    windows: Vec<u16>,
    /// Each PUBLISH in its own TLS record (`--records message`, the default) rather than the
    /// PUBLISHes of one write sharing records (`--records batch`).
    record_per_message: bool,
    connect_concurrency: usize,
    only: Option<String>,
    rounds: usize,
    warmup: bool,
    /// The hub keeps its state in SQLite on disk (`true`) or in memory.
    disk: bool,
    /// The hub fsyncs every commit (`Durability::PowerLoss`, its default).
    sync_full: bool,
    /// The hub's TLS profiles to run, in order (`--tls`; one, or both for `--tls both`).
    tls: Vec<azsim_emulator::state_dir::TlsProfile>,
}

fn parse_params() -> Params {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mut p = Params {
        devices: env("AZSIM_LOAD_DEVICES", 1000),
        messages: env("AZSIM_LOAD_MESSAGES", 20),
        payload: 256,
        window: 1,
        windows: vec![1],
        record_per_message: true,
        connect_concurrency: 200,
        only: None,
        rounds: 1,
        warmup: true,
        disk: true,
        sync_full: true,
        tls: vec![azsim_emulator::state_dir::TlsProfile::Azure],
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1).cloned().unwrap_or_default();
        let num = || val.parse::<usize>().unwrap_or_else(|_| usage(&args[i]));
        match args[i].as_str() {
            "--devices" => p.devices = num(),
            "--messages" => p.messages = num(),
            "--payload" => p.payload = num(),
            "--window" => {
                p.windows = val
                    .split(',')
                    .map(|w| match w.trim().parse::<u16>() {
                        Ok(w) if w > 0 => w,
                        _ => {
                            eprintln!("load: --window takes numbers 1-65535, comma-separated");
                            std::process::exit(2)
                        }
                    })
                    .collect();
                p.window = p.windows[0];
            }
            "--connect-concurrency" => p.connect_concurrency = num().max(1),
            "--only" => p.only = Some(val.clone()),
            "--rounds" => p.rounds = num().max(1),
            "--sync" => {
                p.sync_full = match val.as_str() {
                    "normal" => false,
                    "full" => true,
                    _ => {
                        eprintln!("load: --sync takes normal or full");
                        std::process::exit(2)
                    }
                }
            }
            "--tls" => {
                use azsim_emulator::state_dir::TlsProfile;
                p.tls = match (val.as_str(), TlsProfile::parse(&val)) {
                    ("both", _) => vec![TlsProfile::Modern, TlsProfile::Azure],
                    (_, Some(t)) => vec![t],
                    _ => {
                        eprintln!("load: --tls takes azure, modern or both");
                        std::process::exit(2)
                    }
                }
            }
            "--records" => {
                p.record_per_message = match val.as_str() {
                    "message" => true,
                    "batch" => false,
                    _ => {
                        eprintln!("load: --records takes message or batch");
                        std::process::exit(2)
                    }
                }
            }
            "--store" => {
                p.disk = match val.as_str() {
                    "disk" => true,
                    "memory" => false,
                    _ => {
                        eprintln!("load: --store takes disk or memory");
                        std::process::exit(2)
                    }
                }
            }
            "--no-warmup" => {
                p.warmup = false;
                i += 1;
                continue;
            }
            // cargo bench passes `--bench`; ignore it and anything unknown without a value.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    p
}

fn usage(flag: &str) -> ! {
    eprintln!("load: {flag} needs a number");
    std::process::exit(2)
}

/// What one run against one broker measured.
#[derive(Debug, Default)]
struct RunStats {
    connected: usize,
    connect_failures: usize,
    connect_secs: f64,
    messages: usize,
    publish_failures: usize,
    publish_secs: f64,
    latencies_us: Vec<u64>,
    first_error: Option<String>,
    /// CPU time the broker's threads used during the publish phase.
    broker_cpu_ns: u64,
    /// Of which the hub's store threads (`azsim-hub-*`: the telemetry writer, the WAL
    /// checkpointer, the activity flusher); 0 for mosquitto.
    store_cpu_ns: u64,
    /// CPU time the clients' runtime threads used during the publish phase.
    client_cpu_ns: u64,
    /// The broker's RSS (KiB) before the first device connected and once all had.
    rss_idle_kib: u64,
    rss_connected_kib: u64,
}

impl RunStats {
    fn msgs_per_sec(&self) -> f64 {
        if self.publish_secs > 0.0 {
            self.messages as f64 / self.publish_secs
        } else {
            0.0
        }
    }

    /// CPU microseconds per message acknowledged.
    fn cpu_us_per_msg(&self, ns: u64) -> f64 {
        if self.messages == 0 {
            return f64::NAN;
        }
        ns as f64 / 1000.0 / self.messages as f64
    }

    /// Broker memory per connected device, KiB.
    fn kib_per_device(&self) -> f64 {
        if self.connected == 0 {
            return f64::NAN;
        }
        self.rss_connected_kib.saturating_sub(self.rss_idle_kib) as f64 / self.connected as f64
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let idx = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[idx] as f64 / 1000.0
    }
}

async fn run_load(
    name: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    specs: &[DeviceSpec],
    p: &Arc<Params>,
    broker_pid: &str,
) -> RunStats {
    let broker_cpu_ns = || cpu_ns(broker_pid, |_| true);
    let store_cpu_ns = || cpu_ns(broker_pid, |c| c.starts_with("azsim-hub-"));
    let n = specs.len();
    let rss_idle_kib = rss_kib(broker_pid);
    let connect_gate = Arc::new(Semaphore::new(p.connect_concurrency));
    let connected = Arc::new(Barrier::new(n + 1));
    let start = Arc::new(Barrier::new(n + 1));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for spec in specs {
        tasks.push(tokio::spawn(run_device(
            spec.clone(),
            port,
            tls.clone(),
            p.clone(),
            connect_gate.clone(),
            connected.clone(),
            start.clone(),
        )));
    }
    connected.wait().await;
    let connect_secs = t0.elapsed().as_secs_f64();
    let rss_connected_kib = rss_kib(broker_pid);
    eprintln!("load: {name}: {n} devices through CONNACK in {connect_secs:.2} s, publishing");
    let t1 = Instant::now();
    let (broker0, store0, client0) = (broker_cpu_ns(), store_cpu_ns(), client_cpu_ns());
    start.wait().await;
    let mut stats = RunStats {
        connect_secs,
        rss_idle_kib,
        rss_connected_kib,
        ..RunStats::default()
    };
    for t in tasks {
        match t.await {
            Ok(DeviceOutcome::ConnectFailed(e)) => {
                stats.connect_failures += 1;
                stats.first_error.get_or_insert(format!("connect: {e}"));
            }
            Ok(DeviceOutcome::Done {
                latencies_us,
                error,
                acked,
            }) => {
                stats.connected += 1;
                stats.messages += acked;
                stats.publish_failures += p.messages - acked;
                stats.latencies_us.extend(latencies_us);
                if let Some(e) = error {
                    stats.first_error.get_or_insert(format!("publish: {e}"));
                }
            }
            Err(e) => {
                stats.connect_failures += 1;
                stats.first_error.get_or_insert(format!("task: {e}"));
            }
        }
    }
    // Every task has ended by now; the last PUBACK came before its task's disconnect, so
    // this over-counts by at most one DISCONNECT round: small against the whole run.
    stats.publish_secs = t1.elapsed().as_secs_f64();
    stats.broker_cpu_ns = broker_cpu_ns().saturating_sub(broker0);
    stats.store_cpu_ns = store_cpu_ns().saturating_sub(store0);
    stats.client_cpu_ns = client_cpu_ns().saturating_sub(client0);
    stats.latencies_us.sort_unstable();
    stats
}

fn print_stats(name: &str, s: &RunStats, p: &Params) {
    println!(
        "{name:<10} devices {}/{} connected in {:.2} s | {} of {} msgs in {:.2} s = {:.0} msgs/s | \
         PUBACK p50 {:.2} ms p99 {:.2} ms | errors: {} connect, {} publish",
        s.connected,
        p.devices,
        s.connect_secs,
        s.messages,
        p.devices * p.messages,
        s.publish_secs,
        s.msgs_per_sec(),
        s.percentile_ms(0.50),
        s.percentile_ms(0.99),
        s.connect_failures,
        s.publish_failures,
    );
    let store = if s.store_cpu_ns > 0 {
        format!(
            " (its SQLite threads {:.1} us)",
            s.cpu_us_per_msg(s.store_cpu_ns)
        )
    } else {
        String::new()
    };
    println!(
        "{name:<10} CPU per message (publish phase): broker {:.1} us{store}, clients {:.1} us",
        s.cpu_us_per_msg(s.broker_cpu_ns),
        s.cpu_us_per_msg(s.client_cpu_ns),
    );
    println!(
        "{name:<10} memory: RSS {:.1} MiB idle, {:.1} MiB with {} devices connected = {:.1} KiB per device",
        s.rss_idle_kib as f64 / 1024.0,
        s.rss_connected_kib as f64 / 1024.0,
        s.connected,
        s.kib_per_device(),
    );
    if let Some(e) = &s.first_error {
        println!("{name:<10} first error: {e}");
    }
}

fn main() {
    if let Some(dir) = std::env::var_os(hub::CHILD_ENV) {
        hub::child_main(PathBuf::from(dir));
        return;
    }
    let p = Arc::new(parse_params());
    raise_nofile(p.devices as u64 * 2 + 256);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "azsim load bench: {} devices x {} QoS 1 messages of {} bytes, {} in flight per device, \
         TLS ({}), SAS auth, hub state {} (synchronous={}), hub TLS profile {}, {} cores",
        p.devices,
        p.messages,
        p.payload,
        p.windows
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(" / "),
        if p.record_per_message {
            "a record per PUBLISH"
        } else {
            "PUBLISHes of a write share records"
        },
        if p.disk { "on disk" } else { "in memory" },
        if p.sync_full { "FULL" } else { "NORMAL" },
        p.tls
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(" then "),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    rt.block_on(async {
        if p.warmup && p.only.is_none() {
            // The first load of a process costs the clients more (their heap, page tables and
            // socket buffers grow); without this the broker measured first pays for it.
            let w = Arc::new(Params {
                messages: p.messages.min(5),
                ..(*p).clone()
            });
            eprintln!("load: warm-up run against the hub, not counted");
            if let Err(e) = hub::run(&w, dir.path(), p.tls[0]).await {
                eprintln!("load: warm-up failed: {e}");
            }
        }
        // Per window: every round's (msgs/s, broker CPU us/msg, KiB/device) and ratio.
        let mut runs: Vec<WindowRuns> = p.windows.iter().map(|_| WindowRuns::default()).collect();
        for round in 0..p.rounds {
            if p.rounds > 1 {
                println!("round {}/{}", round + 1, p.rounds);
            }
            for (wi, &window) in p.windows.iter().enumerate() {
                let pw = Arc::new(Params {
                    window,
                    ..(*p).clone()
                });
                if p.windows.len() > 1 {
                    println!("window {window}");
                }
                // Alternate who goes first, so a change in the machine's background load does
                // not always favour the same side.
                let hub_first = (round + wi) % 2 == 0;
                let mut hub_rate = None;
                let mut mosq_rate = None;
                for hub_turn in [hub_first, !hub_first] {
                    if hub_turn {
                        hub_rate = run_hub(&pw, dir.path()).await;
                        runs[wi].hub.extend(hub_rate);
                    } else {
                        mosq_rate = run_mosquitto(&pw, dir.path()).await;
                        runs[wi].mosq.extend(mosq_rate);
                    }
                }
                if let (Some((h, _, _)), Some((m, _, _))) = (hub_rate, mosq_rate)
                    && m > 0.0
                {
                    println!(
                        "ratio      window {window}: azsim-hub / mosquitto ingest = {:.2}x",
                        h / m
                    );
                    runs[wi].ratios.push(h / m);
                }
            }
        }
        if p.rounds > 1 || p.windows.len() > 1 {
            for (w, r) in p.windows.iter().zip(&runs) {
                r.summary(*w, p.rounds);
            }
        }
    });
}

/// One window's figures over the rounds.
#[derive(Default)]
struct WindowRuns {
    hub: Vec<(f64, f64, f64)>,
    mosq: Vec<(f64, f64, f64)>,
    ratios: Vec<f64>,
}

impl WindowRuns {
    fn summary(&self, window: u16, rounds: usize) {
        let col = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
            median(&v.iter().map(f).collect::<Vec<_>>())
        };
        let list: Vec<String> = self.ratios.iter().map(|r| format!("{r:.2}x")).collect();
        println!(
            "summary    window {window}, {rounds} rounds | ratios {} | median ratio {:.2}x | \
             median msgs/s hub {:.0}, mosquitto {:.0} | median broker CPU per message hub {:.1} us, \
             mosquitto {:.1} us | median memory per device hub {:.1} KiB, mosquitto {:.1} KiB",
            list.join(" "),
            median(&self.ratios),
            col(&self.hub, |r| r.0),
            col(&self.mosq, |r| r.0),
            col(&self.hub, |r| r.1),
            col(&self.mosq, |r| r.1),
            col(&self.hub, |r| r.2),
            col(&self.mosq, |r| r.2),
        );
    }
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One run against the hub: (msgs/s, broker CPU us per message, KiB per device), or `None`
/// when skipped.
async fn run_hub(p: &Arc<Params>, dir: &Path) -> Option<(f64, f64, f64)> {
    if p.only.as_deref() == Some("mosquitto") {
        return None;
    }
    // With `--tls both` the hub runs once per profile; the last one's figures go to the ratio.
    let mut last = None;
    for &profile in &p.tls {
        let name = if p.tls.len() > 1 {
            format!("hub/{}", profile.name())
        } else {
            "azsim-hub".to_string()
        };
        last = match hub::run(p, dir, profile).await {
            Ok(stats) => {
                print_stats(&name, &stats, p);
                Some((
                    stats.msgs_per_sec(),
                    stats.cpu_us_per_msg(stats.broker_cpu_ns),
                    stats.kib_per_device(),
                ))
            }
            Err(e) => {
                println!("{name:<10} not run: {e}");
                None
            }
        };
    }
    last
}

/// One run against a fresh mosquitto: (msgs/s, broker CPU us per message, KiB per device).
async fn run_mosquitto(p: &Arc<Params>, dir: &Path) -> Option<(f64, f64, f64)> {
    if p.only.as_deref() == Some("hub") {
        return None;
    }
    match start_mosquitto(dir) {
        Ok(m) => {
            let tls = client_tls(&m.ca_file);
            let specs: Vec<DeviceSpec> = (0..p.devices)
                .map(|i| {
                    let id = format!("load-{i:05}");
                    device_spec("localhost", &id, &random_key())
                })
                .collect();
            let pid = m.child.id().to_string();
            let stats = run_load("mosquitto", m.port, tls, &specs, p, &pid).await;
            print_stats("mosquitto", &stats, p);
            drop(m);
            Some((
                stats.msgs_per_sec(),
                stats.cpu_us_per_msg(stats.broker_cpu_ns),
                stats.kib_per_device(),
            ))
        }
        Err(e) => {
            println!("mosquitto  not run: {e}");
            None
        }
    }
}
