//! The telemetry log seen as an Event Hub: each message is put in a partition (FNV-1a of its
//! device id, mod the partition count) and numbered there (the sequence number, from 0, one
//! more per message of that partition); its offset is its row number in the log. The
//! numbering lives in the table `eh_index`, filled from the log after each commit by one
//! indexer, so it is the same after a restart and a consumer that starts late reads what was
//! sent before. Retention is the log's: rows the log's cap trims are gone from every
//! partition. When the partition count changes between runs, the retained messages are
//! numbered again from 0 under the new count.

use rusqlite::{Connection, OptionalExtension, params};

use crate::HubError;

fn db_err(e: rusqlite::Error) -> HubError {
    HubError::Store(e.to_string())
}

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS eh_index (
  seq INTEGER PRIMARY KEY, part INTEGER NOT NULL, pseq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS eh_index_part ON eh_index (part, pseq);
CREATE TABLE IF NOT EXISTS eh_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

/// How many log rows one indexing transaction takes at most.
const INDEX_BATCH: i64 = 4096;

/// `eh_index` rows per multi-row INSERT (one statement run per row cost the indexer more than
/// the rows).
const ROWS_PER_INSERT: usize = 32;

/// Inserts `(seq, part, pseq)` rows into `eh_index`.
fn insert_numbers(c: &Connection, rows: &[(i64, u32, i64)]) -> Result<(), HubError> {
    let sql = |n: usize| {
        let values = vec!["(?, ?, ?)"; n].join(",");
        format!("INSERT INTO eh_index (seq, part, pseq) VALUES {values}")
    };
    let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
    let mut many = c.prepare_cached(&sql(ROWS_PER_INSERT)).map_err(db_err)?;
    for chunk in &mut chunks {
        for (i, (seq, part, pseq)) in chunk.iter().enumerate() {
            many.raw_bind_parameter(i * 3 + 1, seq).map_err(db_err)?;
            many.raw_bind_parameter(i * 3 + 2, part).map_err(db_err)?;
            many.raw_bind_parameter(i * 3 + 3, pseq).map_err(db_err)?;
        }
        many.raw_execute().map_err(db_err)?;
    }
    let mut one = c.prepare_cached(&sql(1)).map_err(db_err)?;
    for (seq, part, pseq) in chunks.remainder() {
        one.execute(params![seq, part, pseq]).map_err(db_err)?;
    }
    Ok(())
}

/// The partition of a device's telemetry: 32-bit FNV-1a of the device id's UTF-8 bytes, mod
/// `partitions`. Modules of a device share its partition, as in IoT Hub.
pub(crate) fn partition_of(device_id: &str, partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in device_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions.max(1)
}

/// The numbering state: the last log row numbered and each partition's next number.
#[derive(Debug)]
pub(crate) struct Index {
    partitions: u32,
    indexed: i64,
    next: Vec<i64>,
    /// The numbers of log rows below this are forgotten (the log's oldest retained row when
    /// it was last trimmed).
    trimmed: i64,
    /// Whether device telemetry is routed here (`--route`); the hub's own events are in the
    /// log only when routed.
    telemetry: bool,
}

impl Index {
    /// Load (creating the tables; renumbering when the partition count changed).
    pub fn open(c: &Connection, partitions: u32) -> Result<Index, HubError> {
        c.execute_batch(SCHEMA).map_err(db_err)?;
        let had: Option<i64> = c
            .query_row(
                "SELECT value FROM eh_meta WHERE name = 'partitions'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        if had != Some(i64::from(partitions)) {
            c.execute_batch("DELETE FROM eh_index;").map_err(db_err)?;
            c.execute(
                "INSERT OR REPLACE INTO eh_meta (name, value) VALUES ('partitions', ?1)",
                params![partitions],
            )
            .map_err(db_err)?;
        }
        let indexed: i64 = c
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM eh_index", [], |r| {
                r.get(0)
            })
            .map_err(db_err)?;
        let mut next = vec![0i64; partitions as usize];
        let mut stmt = c
            .prepare("SELECT part, MAX(pseq) FROM eh_index GROUP BY part")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db_err)?;
        for row in rows {
            let (part, max) = row.map_err(db_err)?;
            if let Some(n) = usize::try_from(part).ok().and_then(|p| next.get_mut(p)) {
                *n = max + 1;
            }
        }
        Ok(Index {
            partitions,
            indexed,
            next,
            trimmed: 0,
            telemetry: true,
        })
    }

    /// Number the log rows committed since the last call, and forget the numbers of rows the
    /// log has trimmed. Returns whether anything was numbered.
    pub fn catch_up(&mut self, c: &mut Connection) -> Result<bool, HubError> {
        let mut any = false;
        loop {
            let tx = c.transaction().map_err(db_err)?;
            // The segments holding rows past the last numbered, oldest first (the view would
            // merge all eight).
            let spans = super::segments::spans(&tx).map_err(db_err)?;
            let mut rows: Vec<(i64, String, bool)> = Vec::new();
            for span in spans.iter().filter(|s| s.last > self.indexed) {
                let left = INDEX_BATCH - rows.len() as i64;
                if left <= 0 {
                    break;
                }
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "SELECT seq, device_id, source IS NULL FROM {} WHERE seq > ?1 \
                         ORDER BY seq LIMIT ?2",
                        span.table()
                    ))
                    .map_err(db_err)?;
                for r in stmt
                    .query_map(params![self.indexed, left], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .map_err(db_err)?
                {
                    rows.push(r.map_err(db_err)?);
                }
            }
            let mut next = self.next.clone();
            let mut numbered = Vec::with_capacity(rows.len());
            for (seq, device, is_telemetry) in &rows {
                if *is_telemetry && !self.telemetry {
                    continue;
                }
                let part = partition_of(device, self.partitions);
                let n = &mut next[part as usize];
                numbered.push((*seq, part, *n));
                *n += 1;
            }
            insert_numbers(&tx, &numbered)?;
            // Only when the log has been trimmed since.
            let first = spans.first().map_or(0, |s| s.first);
            if first > self.trimmed {
                tx.prepare_cached("DELETE FROM eh_index WHERE seq < ?1")
                    .map_err(db_err)?
                    .execute(params![first])
                    .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)?;
            self.trimmed = self.trimmed.max(first);
            self.next = next;
            let Some((last, _, _)) = rows.last() else {
                return Ok(any);
            };
            self.indexed = *last;
            any = true;
            if (rows.len() as i64) < INDEX_BATCH {
                return Ok(true);
            }
        }
    }

    /// Leave device telemetry out (`--route` without `telemetry`): only the events the hub
    /// routes get numbers.
    pub fn without_telemetry(mut self) -> Index {
        self.telemetry = false;
        self
    }

    /// The number the next message of `part` will get.
    pub fn next_of(&self, part: u32) -> i64 {
        self.next.get(part as usize).copied().unwrap_or(0)
    }
}

/// One message of a partition, as the log keeps it.
#[derive(Debug)]
pub(crate) struct Row {
    /// The offset: the message's row in the log.
    pub offset: i64,
    pub sequence_number: i64,
    pub device_id: String,
    pub module_id: Option<String>,
    pub generation_id: String,
    /// How the sender's connection signed in.
    pub auth: crate::telemetry::AuthMethod,
    pub enqueued_ns: i64,
    pub properties: String,
    pub body: Vec<u8>,
    /// Telemetry, or the event the hub routed (`routing.rs`).
    pub source: crate::routing::Source,
}

/// Up to `limit` messages of `part` numbered `from` or later, in order.
pub(crate) fn read(c: &Connection, part: u32, from: i64, limit: u32) -> Result<Vec<Row>, HubError> {
    // The numbers first, then each message from its segment: a join with the view `events`
    // would copy the whole log into a temporary table first.
    let spans = super::segments::spans(c).map_err(db_err)?;
    let Some(first) = spans.first().map(|s| s.first) else {
        return Ok(Vec::new());
    };
    let numbers: Vec<(i64, i64)> = c
        .prepare_cached(
            "SELECT seq, pseq FROM eh_index WHERE part = ?1 AND pseq >= ?2 AND seq >= ?3 \
             ORDER BY pseq LIMIT ?4",
        )
        .map_err(db_err)?
        .query_map(params![part, from, first, limit], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(db_err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(db_err)?;
    let mut out = Vec::with_capacity(numbers.len());
    for (seq, pseq) in numbers {
        if let Some(row) = message(c, &spans, seq, pseq)? {
            out.push(row);
        }
    }
    Ok(out)
}

/// Message `seq` of the log (numbered `pseq` in its partition), if retained.
fn message(
    c: &Connection,
    spans: &[super::segments::Span],
    seq: i64,
    pseq: i64,
) -> Result<Option<Row>, HubError> {
    let Some(span) = super::segments::segment_of(spans, seq) else {
        return Ok(None);
    };
    c.prepare_cached(&format!(
        "SELECT device_id, module_id, COALESCE(generation_id, ''), COALESCE(enqueued_ns, 0), \
         COALESCE(props, ''), COALESCE(body, CAST(json AS BLOB)), source, auth_method FROM {} \
         WHERE seq = ?1",
        span.table()
    ))
    .map_err(db_err)?
    .query_row(params![seq], |r| {
        Ok(Row {
            offset: seq,
            sequence_number: pseq,
            device_id: r.get(0)?,
            module_id: r.get(1)?,
            generation_id: r.get(2)?,
            auth: crate::telemetry::AuthMethod::from_code(r.get(7)?),
            enqueued_ns: r.get(3)?,
            properties: r.get(4)?,
            body: r.get(5)?,
            source: crate::routing::Source::from_column(r.get::<_, Option<String>>(6)?.as_deref()),
        })
    })
    .optional()
    .map_err(db_err)
}

/// Where a receiver starts, as its filter says (see `amqp::eventhub::filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position {
    /// The oldest retained message.
    Start,
    /// After the last message enqueued when the link attached.
    Latest,
    Offset {
        offset: i64,
        inclusive: bool,
    },
    SequenceNumber {
        number: i64,
        inclusive: bool,
    },
    /// Enqueued after (or at) this Unix millisecond.
    EnqueuedTime {
        ms: i64,
        inclusive: bool,
    },
}

/// The first sequence number of `part` a receiver starting at `pos` gets; `next` is the
/// number the partition's next message will get (where a position past the end starts).
pub(crate) fn start_of(
    c: &Connection,
    part: u32,
    pos: Position,
    next: i64,
) -> Result<i64, HubError> {
    let first = |sql: &str, value: i64| -> Result<i64, HubError> {
        let found: Option<i64> = c
            .query_row(sql, params![part, value], |r| r.get(0))
            .map_err(db_err)?;
        Ok(found.unwrap_or(next))
    };
    match pos {
        Position::Start => Ok(0),
        Position::Latest => Ok(next),
        Position::SequenceNumber { number, inclusive } => Ok(if inclusive {
            number
        } else {
            number.saturating_add(1)
        }
        .max(0)),
        Position::Offset { offset, inclusive } => first(
            if inclusive {
                "SELECT MIN(pseq) FROM eh_index WHERE part = ?1 AND seq >= ?2"
            } else {
                "SELECT MIN(pseq) FROM eh_index WHERE part = ?1 AND seq > ?2"
            },
            offset,
        ),
        Position::EnqueuedTime { ms, inclusive } => first(
            // Once per receiver: the view's rows are read once into the IN list.
            if inclusive {
                "SELECT MIN(pseq) FROM eh_index WHERE part = ?1 \
                 AND seq IN (SELECT seq FROM events WHERE enqueued_ns >= ?2)"
            } else {
                "SELECT MIN(pseq) FROM eh_index WHERE part = ?1 \
                 AND seq IN (SELECT seq FROM events WHERE enqueued_ns > ?2)"
            },
            // A message in the same millisecond counts as at it, not after.
            if inclusive {
                ms.saturating_mul(1_000_000)
            } else {
                ms.saturating_add(1).saturating_mul(1_000_000) - 1
            },
        ),
    }
}

/// What `com.microsoft:partition` READ reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionInfo {
    pub begin_sequence_number: i64,
    pub last_sequence_number: i64,
    /// `-1` when the partition is empty.
    pub last_offset: i64,
    pub last_enqueued_ms: i64,
    pub is_empty: bool,
}

/// The retained range of `part`; `next` as in [`start_of`].
pub(crate) fn partition_info(
    c: &Connection,
    part: u32,
    next: i64,
) -> Result<PartitionInfo, HubError> {
    let first: Option<i64> = c
        .query_row(
            "SELECT MIN(pseq) FROM eh_index WHERE part = ?1",
            params![part],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    // The newest number, and its message's time (none when trimmed: then all are).
    let newest: Option<(i64, i64)> = c
        .query_row(
            "SELECT pseq, seq FROM eh_index WHERE part = ?1 ORDER BY pseq DESC LIMIT 1",
            params![part],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db_err)?;
    let last = match newest {
        Some((pseq, seq)) => {
            let spans = super::segments::spans(c).map_err(db_err)?;
            message(c, &spans, seq, pseq)?.map(|m| (pseq, seq, m.enqueued_ns))
        }
        None => None,
    };
    Ok(match (first, last) {
        (Some(first), Some((pseq, seq, ns))) => PartitionInfo {
            begin_sequence_number: first,
            last_sequence_number: pseq,
            last_offset: seq,
            last_enqueued_ms: ns / 1_000_000,
            is_empty: false,
        },
        _ => PartitionInfo {
            begin_sequence_number: next,
            last_sequence_number: next - 1,
            last_offset: -1,
            last_enqueued_ms: 0,
            is_empty: true,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages 1, 2, ... into the first segment, as the writer numbers them.
    fn log(c: &Connection, devices: &[&str]) {
        for (i, d) in devices.iter().enumerate() {
            c.execute(
                "INSERT INTO events_0 (seq, device_id, json, enqueued_ns, props, body) \
                 VALUES (?1, ?2, '', ?3, '', ?4)",
                params![
                    i as i64 + 1,
                    d,
                    (i as i64 + 1) * 1_000_000_000,
                    d.as_bytes()
                ],
            )
            .unwrap();
        }
    }

    /// A consumer that read up to an offset before the hub's upgrade to the segmented log reads
    /// on from there after it, with the same offsets and sequence numbers.
    #[test]
    fn offsets_and_numbers_given_before_the_segments_hold_after_the_move() {
        let mut c = Connection::open_in_memory().unwrap();
        // The single table of the builds before, numbered by the indexer of then.
        c.execute_batch(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
             device_id TEXT NOT NULL, json TEXT NOT NULL, module_id TEXT, generation_id TEXT, \
             enqueued_ns INTEGER, props TEXT, body BLOB, source TEXT);",
        )
        .unwrap();
        c.execute_batch(SCHEMA).unwrap();
        let (a, b) = ("dev-a", "dev-b");
        assert_ne!(partition_of(a, 2), partition_of(b, 2));
        let pa = partition_of(a, 2);
        for (i, d) in [a, b, a, a].iter().enumerate() {
            let seq = i as i64 + 1;
            c.execute(
                "INSERT INTO events (device_id, json, body) VALUES (?1, '', ?2)",
                params![d, format!("m{seq}").into_bytes()],
            )
            .unwrap();
        }
        c.execute_batch("INSERT INTO eh_meta VALUES ('partitions', 2);")
            .unwrap();
        let pb = partition_of(b, 2);
        for (seq, part, pseq) in [(1, pa, 0), (2, pb, 0), (3, pa, 1), (4, pa, 2)] {
            c.execute(
                "INSERT INTO eh_index VALUES (?1, ?2, ?3)",
                params![seq, part, pseq],
            )
            .unwrap();
        }
        // The upgrade, then a new message.
        let ring = super::super::segments::open(&mut c, 100).unwrap();
        assert_eq!(ring.next_seq, 5);
        c.execute(
            "INSERT INTO events_0 (seq, device_id, json, body) VALUES (5, ?1, '', ?2)",
            params![a, b"m5".to_vec()],
        )
        .unwrap();
        let mut idx = Index::open(&c, 2).unwrap();
        assert_eq!(idx.next_of(pa), 3, "numbering goes on");
        idx.catch_up(&mut c).unwrap();
        // The consumer had offset 1 (sequence number 0): it reads on from there.
        let from = start_of(
            &c,
            pa,
            Position::Offset {
                offset: 1,
                inclusive: false,
            },
            idx.next_of(pa),
        )
        .unwrap();
        let rows = read(&c, pa, from, 10).unwrap();
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.offset, r.sequence_number, r.body.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (3, 1, b"m3".to_vec()),
                (4, 2, b"m4".to_vec()),
                (5, 3, b"m5".to_vec())
            ]
        );
    }

    #[test]
    fn the_partition_is_fnv1a_of_the_device_id() {
        // FNV-1a 32 of "" and "a" (published test values).
        assert_eq!(partition_of("", u32::MAX), 0x811c_9dc5);
        assert_eq!(partition_of("a", u32::MAX), 0xe40c_292c);
        assert!((0..100).all(|i| partition_of(&format!("dev{i}"), 4) < 4));
    }

    #[test]
    fn messages_are_numbered_per_partition_and_the_numbers_survive_reopening() {
        let mut c = crate::store::memory_db();
        let mut idx = Index::open(&c, 2).unwrap();
        let (a, b) = ("dev-a", "dev-b");
        assert_ne!(
            partition_of(a, 2),
            partition_of(b, 2),
            "pick devices in both"
        );
        log(&c, &[a, b, a, a]);
        assert!(idx.catch_up(&mut c).unwrap());
        assert!(!idx.catch_up(&mut c).unwrap(), "nothing new");
        let pa = partition_of(a, 2);
        let rows = read(&c, pa, 0, 10).unwrap();
        let nums: Vec<_> = rows.iter().map(|r| (r.sequence_number, r.offset)).collect();
        assert_eq!(nums, [(0, 1), (1, 3), (2, 4)]);
        assert_eq!(read(&c, pa, 2, 10).unwrap().len(), 1);

        let idx2 = Index::open(&c, 2).unwrap();
        assert_eq!(
            idx2.next_of(pa),
            3,
            "the next number is kept across a restart"
        );
        let info = partition_info(&c, pa, idx2.next_of(pa)).unwrap();
        assert_eq!(
            info,
            PartitionInfo {
                begin_sequence_number: 0,
                last_sequence_number: 2,
                last_offset: 4,
                last_enqueued_ms: 4_000,
                is_empty: false
            }
        );
        // Start positions.
        let start = |p| start_of(&c, pa, p, 3).unwrap();
        assert_eq!(start(Position::Start), 0);
        assert_eq!(start(Position::Latest), 3);
        assert_eq!(
            start(Position::Offset {
                offset: 1,
                inclusive: false
            }),
            1
        );
        assert_eq!(
            start(Position::Offset {
                offset: 1,
                inclusive: true
            }),
            0
        );
        assert_eq!(
            start(Position::Offset {
                offset: 99,
                inclusive: false
            }),
            3
        );
        assert_eq!(
            start(Position::SequenceNumber {
                number: 1,
                inclusive: false
            }),
            2
        );
        assert_eq!(
            start(Position::EnqueuedTime {
                ms: 3_000,
                inclusive: true
            }),
            1
        );
        assert_eq!(
            start(Position::EnqueuedTime {
                ms: 3_000,
                inclusive: false
            }),
            2
        );

        // The log trims its oldest rows: they leave the partition.
        c.execute("DELETE FROM events_0 WHERE seq <= 3", [])
            .unwrap();
        let mut idx = Index::open(&c, 2).unwrap();
        idx.catch_up(&mut c).unwrap();
        let info = partition_info(&c, pa, idx.next_of(pa)).unwrap();
        assert_eq!(info.begin_sequence_number, 2);
        // Another partition count numbers the retained messages again.
        let idx4 = Index::open(&c, 4).unwrap();
        assert!((0..4).all(|p| idx4.next_of(p) == 0));
    }
}
