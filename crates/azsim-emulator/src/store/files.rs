//! File upload in SQLite: the uploads devices have begun and not yet notified (the per-device
//! cap and the single-use correlation ids), the blobs of the hub's blob endpoint with their
//! uncommitted blocks, and the queue of file upload notifications the service receives.
//!
//! Blobs are rows rather than files in the state dir: an in-memory hub keeps them in memory as
//! it keeps everything else, a Put Block List commit (concatenate the blocks, replace the blob,
//! drop the blocks) is one transaction, a blob name needs no escaping into a file path, and
//! `hub.db` stays the one file to back up. The cost is that a blob is read whole into memory,
//! which the size cap (`FileUploadSettings::max_blob_bytes`) bounds.

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::HubError;

fn db_err(e: rusqlite::Error) -> HubError {
    HubError::Store(e.to_string())
}

/// The tables (created on open; `CREATE ... IF NOT EXISTS`, so older databases gain them).
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS file_uploads (
  correlation_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, container TEXT NOT NULL,
  blob_name TEXT NOT NULL, created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS file_uploads_device ON file_uploads (device_id, expires_ms);
CREATE TABLE IF NOT EXISTS blobs (
  container TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL, content_type TEXT,
  created_ms INTEGER NOT NULL, modified_ms INTEGER NOT NULL, etag TEXT NOT NULL,
  PRIMARY KEY (container, name));
CREATE TABLE IF NOT EXISTS blob_blocks (
  container TEXT NOT NULL, name TEXT NOT NULL, block_id TEXT NOT NULL, data BLOB NOT NULL,
  PRIMARY KEY (container, name, block_id));
CREATE TABLE IF NOT EXISTS file_notifications (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, json TEXT NOT NULL, expires_ms INTEGER NOT NULL,
  deliveries INTEGER NOT NULL DEFAULT 0, lock_token TEXT, locked_until_ms INTEGER);
";

/// Why an upload could not begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BeginRefused {
    /// The device already has this many uploads it has not notified (and whose SAS is live).
    TooManyActive(u32),
}

/// An upload a device asks to begin.
#[derive(Debug, Clone)]
pub(crate) struct NewUpload {
    pub device: String,
    pub container: String,
    pub blob_name: String,
    pub correlation_id: String,
    /// When its SAS runs out (Unix ms).
    pub expires_ms: i64,
}

/// Record an upload its device begins, unless the device already has `max` live ones.
/// Uploads whose SAS has run out (`expires_ms`) no longer count, as on IoT Hub.
pub(crate) fn begin_upload(
    c: &mut Connection,
    up: &NewUpload,
    now_ms: i64,
    max: u32,
) -> Result<Result<(), BeginRefused>, HubError> {
    let tx = c.transaction().map_err(db_err)?;
    tx.execute(
        "DELETE FROM file_uploads WHERE expires_ms <= ?1",
        params![now_ms],
    )
    .map_err(db_err)?;
    let active: u32 = tx
        .query_row(
            "SELECT COUNT(*) FROM file_uploads WHERE device_id = ?1",
            params![up.device],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    if active >= max {
        return Ok(Err(BeginRefused::TooManyActive(max)));
    }
    tx.execute(
        "INSERT INTO file_uploads (correlation_id, device_id, container, blob_name, created_ms, \
         expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            up.correlation_id,
            up.device,
            up.container,
            up.blob_name,
            now_ms,
            up.expires_ms
        ],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(Ok(()))
}

/// An upload a device has begun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upload {
    pub container: String,
    pub blob_name: String,
}

/// End the upload of `device` under `correlation_id` (used once: the record goes); `None` when
/// there is no such live upload of this device.
pub(crate) fn finish_upload(
    c: &Connection,
    device: &str,
    correlation_id: &str,
    now_ms: i64,
) -> Result<Option<Upload>, HubError> {
    let found = c
        .query_row(
            "DELETE FROM file_uploads WHERE correlation_id = ?1 AND device_id = ?2 \
             AND expires_ms > ?3 RETURNING container, blob_name",
            params![correlation_id, device, now_ms],
            |r| {
                Ok(Upload {
                    container: r.get(0)?,
                    blob_name: r.get(1)?,
                })
            },
        )
        .optional()
        .map_err(db_err)?;
    Ok(found)
}

/// A stored blob's properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlobProps {
    pub container: String,
    pub name: String,
    pub size: u64,
    pub content_type: Option<String>,
    pub created_ms: i64,
    pub modified_ms: i64,
    pub etag: String,
}

fn etag_of(now_ms: i64, salt: &str) -> String {
    // Azure's look: `"0x8D..."`, different for every write (the salt keeps two writes within
    // one millisecond apart).
    let h = salt
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!("\"0x8D{now_ms:011X}{h:08X}\"")
}

/// Create or replace the blob as `len` zero bytes (filled in place after, through SQLite's
/// incremental blob I/O: a big value is neither bound as a copy nor built in memory), dropping
/// its uncommitted blocks. Returns its properties and its row.
fn create_blob(
    c: &Connection,
    container: &str,
    name: &str,
    len: u64,
    content_type: Option<&str>,
    now_ms: i64,
) -> Result<(BlobProps, i64), HubError> {
    let created: Option<i64> = c
        .query_row(
            "SELECT created_ms FROM blobs WHERE container = ?1 AND name = ?2",
            params![container, name],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)?;
    let etag = etag_of(now_ms, &uuid::Uuid::new_v4().to_string());
    let created_ms = created.unwrap_or(now_ms);
    let zeros = i64::try_from(len).map_err(|_| HubError::Store("blob too large".into()))?;
    let rowid: i64 = c
        .query_row(
            "INSERT OR REPLACE INTO blobs (container, name, data, content_type, created_ms, \
             modified_ms, etag) VALUES (?1, ?2, zeroblob(?3), ?4, ?5, ?6, ?7) RETURNING rowid",
            params![
                container,
                name,
                zeros,
                content_type,
                created_ms,
                now_ms,
                etag
            ],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    Ok((
        BlobProps {
            container: container.to_string(),
            name: name.to_string(),
            size: len,
            content_type: content_type.map(str::to_string),
            created_ms,
            modified_ms: now_ms,
            etag,
        },
        rowid,
    ))
}

fn drop_blocks(c: &Connection, container: &str, name: &str) -> Result<(), HubError> {
    c.execute(
        "DELETE FROM blob_blocks WHERE container = ?1 AND name = ?2",
        params![container, name],
    )
    .map_err(db_err)?;
    Ok(())
}

fn io_err(e: std::io::Error) -> HubError {
    HubError::Store(e.to_string())
}

/// Put Blob: the blob is `data`.
pub(crate) fn put_blob(
    c: &mut Connection,
    container: &str,
    name: &str,
    data: &[u8],
    content_type: Option<&str>,
    now_ms: i64,
) -> Result<BlobProps, HubError> {
    use std::io::Write as _;
    let tx = c.transaction().map_err(db_err)?;
    let (props, rowid) = create_blob(
        &tx,
        container,
        name,
        data.len() as u64,
        content_type,
        now_ms,
    )?;
    {
        let mut blob = tx
            .blob_open(rusqlite::MAIN_DB, "blobs", "data", rowid, false)
            .map_err(db_err)?;
        blob.write_all(data).map_err(io_err)?;
    }
    drop_blocks(&tx, container, name)?;
    tx.commit().map_err(db_err)?;
    Ok(props)
}

/// Why a block could not be staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockRefused {
    /// The blob's uncommitted blocks would pass the size cap.
    TooLarge,
}

/// Put Block: stage `data` under `block_id` (replacing a block of that id), unless the blob's
/// uncommitted blocks would then hold more than `max_bytes`.
pub(crate) fn put_block(
    c: &mut Connection,
    container: &str,
    name: &str,
    block_id: &str,
    data: &[u8],
    max_bytes: u64,
) -> Result<Result<(), BlockRefused>, HubError> {
    let tx = c.transaction().map_err(db_err)?;
    let staged: i64 = tx
        .query_row(
            "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM blob_blocks \
             WHERE container = ?1 AND name = ?2 AND block_id <> ?3",
            params![container, name, block_id],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    if u64::try_from(staged).unwrap_or(0) + data.len() as u64 > max_bytes {
        return Ok(Err(BlockRefused::TooLarge));
    }
    tx.execute(
        "INSERT OR REPLACE INTO blob_blocks (container, name, block_id, data) \
         VALUES (?1, ?2, ?3, ?4)",
        params![container, name, block_id, data],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(Ok(()))
}

/// Why a block list could not be committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CommitRefused {
    /// A listed block is not staged.
    UnknownBlock(String),
    /// The blob would be over the size cap.
    TooLarge,
}

/// Put Block List: the blob becomes its staged blocks `ids`, in order; the blocks go.
pub(crate) fn commit_blocks(
    c: &mut Connection,
    container: &str,
    name: &str,
    ids: &[String],
    content_type: Option<&str>,
    now_ms: i64,
    max_bytes: u64,
) -> Result<Result<BlobProps, CommitRefused>, HubError> {
    let tx = c.transaction().map_err(db_err)?;
    // The listed blocks' rows and sizes first: an unknown one or too much refuses the list
    // before anything is written.
    let mut blocks = Vec::with_capacity(ids.len());
    let mut total = 0u64;
    {
        let mut find = tx
            .prepare(
                "SELECT rowid, LENGTH(data) FROM blob_blocks WHERE container = ?1 AND name = ?2 \
                 AND block_id = ?3",
            )
            .map_err(db_err)?;
        for id in ids {
            let found: Option<(i64, i64)> = find
                .query_row(params![container, name, id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(db_err)?;
            let Some((rowid, len)) = found else {
                return Ok(Err(CommitRefused::UnknownBlock(id.clone())));
            };
            total += u64::try_from(len).unwrap_or(0);
            if total > max_bytes {
                return Ok(Err(CommitRefused::TooLarge));
            }
            blocks.push(rowid);
        }
    }
    let (props, rowid) = create_blob(&tx, container, name, total, content_type, now_ms)?;
    {
        let mut out = tx
            .blob_open(rusqlite::MAIN_DB, "blobs", "data", rowid, false)
            .map_err(db_err)?;
        for block in blocks {
            let mut input = tx
                .blob_open(rusqlite::MAIN_DB, "blob_blocks", "data", block, true)
                .map_err(db_err)?;
            std::io::copy(&mut input, &mut out).map_err(io_err)?;
        }
    }
    drop_blocks(&tx, container, name)?;
    tx.commit().map_err(db_err)?;
    Ok(Ok(props))
}

fn props_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BlobProps> {
    Ok(BlobProps {
        container: r.get(0)?,
        name: r.get(1)?,
        size: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
        content_type: r.get(3)?,
        created_ms: r.get(4)?,
        modified_ms: r.get(5)?,
        etag: r.get(6)?,
    })
}

const PROPS: &str =
    "SELECT container, name, LENGTH(data), content_type, created_ms, modified_ms, etag FROM blobs";

/// The blob's properties, if it exists.
pub(crate) fn blob_props(
    c: &Connection,
    container: &str,
    name: &str,
) -> Result<Option<BlobProps>, HubError> {
    c.query_row(
        &format!("{PROPS} WHERE container = ?1 AND name = ?2"),
        params![container, name],
        props_row,
    )
    .optional()
    .map_err(db_err)
}

/// The blob's properties and bytes, if it exists.
pub(crate) fn get_blob(
    c: &Connection,
    container: &str,
    name: &str,
) -> Result<Option<(BlobProps, Vec<u8>)>, HubError> {
    use std::io::Read as _;
    let Some(props) = blob_props(c, container, name)? else {
        return Ok(None);
    };
    let rowid: i64 = c
        .query_row(
            "SELECT rowid FROM blobs WHERE container = ?1 AND name = ?2",
            params![container, name],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    // Read straight into a buffer of its size (a column read would have SQLite hold a copy).
    let mut blob = c
        .blob_open(rusqlite::MAIN_DB, "blobs", "data", rowid, true)
        .map_err(db_err)?;
    let mut data = Vec::with_capacity(usize::try_from(props.size).unwrap_or(0));
    blob.read_to_end(&mut data).map_err(io_err)?;
    Ok(Some((props, data)))
}

/// Every stored blob's properties, by container and name.
pub(crate) fn list_blobs(c: &Connection) -> Result<Vec<BlobProps>, HubError> {
    let mut st = c
        .prepare(&format!("{PROPS} ORDER BY container, name"))
        .map_err(db_err)?;
    let rows = st.query_map([], props_row).map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

/// Queue a file upload notification (its JSON body) until `expires_ms`.
pub(crate) fn enqueue_notification(
    c: &Connection,
    json: &str,
    expires_ms: i64,
) -> Result<(), HubError> {
    c.execute(
        "INSERT INTO file_notifications (json, expires_ms) VALUES (?1, ?2)",
        params![json, expires_ms],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Hand out the oldest deliverable notification under `token` until `now_ms + lock_ms`;
/// expired ones and ones handed out `max_deliveries` times go first (as C2D's are dropped).
pub(crate) fn receive_notification(
    c: &mut Connection,
    now_ms: i64,
    lock_ms: i64,
    max_deliveries: u32,
    token: &str,
) -> Result<Option<String>, HubError> {
    let tx = c.transaction().map_err(db_err)?;
    tx.execute(
        "DELETE FROM file_notifications WHERE expires_ms <= ?1 \
         OR (deliveries >= ?2 AND (locked_until_ms IS NULL OR locked_until_ms <= ?1))",
        params![now_ms, max_deliveries],
    )
    .map_err(db_err)?;
    let next: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, json FROM file_notifications \
             WHERE locked_until_ms IS NULL OR locked_until_ms <= ?1 ORDER BY seq LIMIT 1",
            params![now_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db_err)?;
    let Some((seq, json)) = next else {
        tx.commit().map_err(db_err)?;
        return Ok(None);
    };
    tx.execute(
        "UPDATE file_notifications SET lock_token = ?1, locked_until_ms = ?2, \
         deliveries = deliveries + 1 WHERE seq = ?3",
        params![token, now_ms + lock_ms, seq],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(Some(json))
}

/// Complete (remove) or abandon (make deliverable again) the notification locked under `token`.
pub(crate) fn settle_notification(
    c: &Connection,
    token: &str,
    complete: bool,
) -> Result<bool, HubError> {
    let n = if complete {
        c.execute(
            "DELETE FROM file_notifications WHERE lock_token = ?1",
            params![token],
        )
    } else {
        c.execute(
            "UPDATE file_notifications SET lock_token = NULL, locked_until_ms = NULL \
             WHERE lock_token = ?1",
            params![token],
        )
    }
    .map_err(db_err)?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(device: &str, cid: &str, expires_ms: i64) -> NewUpload {
        NewUpload {
            device: device.into(),
            container: "ct".into(),
            blob_name: format!("{device}/f"),
            correlation_id: cid.into(),
            expires_ms,
        }
    }

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c
    }

    #[test]
    fn a_device_has_at_most_max_live_uploads_and_an_expired_one_frees_its_place() {
        let mut c = db();
        for i in 0..2 {
            let r = begin_upload(&mut c, &up("d", &format!("c{i}"), 1000), 0, 2).unwrap();
            assert_eq!(r, Ok(()));
        }
        let r = begin_upload(&mut c, &up("d", "c2", 1000), 0, 2).unwrap();
        assert_eq!(r, Err(BeginRefused::TooManyActive(2)));
        // Another device has its own places.
        assert_eq!(
            begin_upload(&mut c, &up("e", "c3", 1000), 0, 2).unwrap(),
            Ok(())
        );
        // At expiry the two are gone.
        assert_eq!(
            begin_upload(&mut c, &up("d", "c4", 2000), 1000, 2).unwrap(),
            Ok(())
        );
    }

    #[test]
    fn a_correlation_id_is_used_once_and_only_by_its_device() {
        let mut c = db();
        begin_upload(&mut c, &up("d", "cid", 1000), 0, 10)
            .unwrap()
            .unwrap();
        assert_eq!(finish_upload(&c, "e", "cid", 1).unwrap(), None);
        let up = finish_upload(&c, "d", "cid", 1).unwrap().unwrap();
        assert_eq!(up.blob_name, "d/f");
        assert_eq!(finish_upload(&c, "d", "cid", 1).unwrap(), None);
    }

    #[test]
    fn blocks_commit_in_the_listed_order_and_go() {
        let mut c = db();
        put_block(&mut c, "ct", "b", "B", b"world", 100)
            .unwrap()
            .unwrap();
        put_block(&mut c, "ct", "b", "A", b"hello ", 100)
            .unwrap()
            .unwrap();
        let ids = ["A".to_string(), "B".to_string()];
        let p = commit_blocks(&mut c, "ct", "b", &ids, None, 5, 100)
            .unwrap()
            .unwrap();
        assert_eq!(p.size, 11);
        let (_, data) = get_blob(&c, "ct", "b").unwrap().unwrap();
        assert_eq!(data, b"hello world");
        // The blocks were used up.
        let r = commit_blocks(&mut c, "ct", "b", &ids, None, 6, 100).unwrap();
        assert_eq!(r, Err(CommitRefused::UnknownBlock("A".into())));
        // An empty blob, and a block used twice in one list.
        put_blob(&mut c, "ct", "e", b"", None, 7).unwrap();
        assert_eq!(get_blob(&c, "ct", "e").unwrap().unwrap().1, b"");
        put_block(&mut c, "ct", "t", "A", b"ab", 100)
            .unwrap()
            .unwrap();
        let twice = ["A".to_string(), "A".to_string()];
        commit_blocks(&mut c, "ct", "t", &twice, None, 8, 100)
            .unwrap()
            .unwrap();
        assert_eq!(get_blob(&c, "ct", "t").unwrap().unwrap().1, b"abab");
        assert_eq!(
            put_block(&mut c, "ct", "c", "A", &[0; 60], 100).unwrap(),
            Ok(())
        );
        assert_eq!(
            put_block(&mut c, "ct", "c", "B", &[0; 60], 100).unwrap(),
            Err(BlockRefused::TooLarge)
        );
    }

    #[test]
    fn a_notification_is_locked_abandoned_redelivered_and_completed() {
        let mut c = db();
        enqueue_notification(&c, "{\"n\":1}", 10_000).unwrap();
        let got = receive_notification(&mut c, 0, 100, 3, "t1").unwrap();
        assert_eq!(got.as_deref(), Some("{\"n\":1}"));
        // Locked: nothing else to hand out.
        assert_eq!(
            receive_notification(&mut c, 50, 100, 3, "t2").unwrap(),
            None
        );
        assert!(settle_notification(&c, "t1", false).unwrap());
        assert!(
            receive_notification(&mut c, 60, 100, 3, "t3")
                .unwrap()
                .is_some()
        );
        assert!(settle_notification(&c, "t3", true).unwrap());
        assert_eq!(
            receive_notification(&mut c, 70, 100, 3, "t4").unwrap(),
            None
        );
        // Delivered max times without completion: dropped.
        enqueue_notification(&c, "{}", 10_000).unwrap();
        for (i, t) in ["a", "b"].iter().enumerate() {
            assert!(
                receive_notification(&mut c, 1000 * (i as i64 + 1), 100, 2, t)
                    .unwrap()
                    .is_some()
            );
        }
        assert_eq!(
            receive_notification(&mut c, 5000, 100, 2, "c").unwrap(),
            None
        );
    }
}
