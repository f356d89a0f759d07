//! `$management` READ as Event Hubs answers it: `com.microsoft:eventhub` (name, created_at,
//! partition_count, partition_ids as an AMQP array of strings) and `com.microsoft:partition`
//! (begin and last sequence numbers, last offset and enqueued time, is_partition_empty). The
//! request is authorized by its `security_token` application property or by the
//! connection's CBS claims; either must cover the Event Hub with `ServiceConnect`.

use std::sync::Arc;

use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::{Array, OrderedMap, Timestamp, Value};

use crate::amqp::ConnCtx;
use crate::amqp::address::path_covers;
use crate::amqp::cbs::check_token;
use crate::amqp::node::{Response, app_prop};
use crate::auth::Permission;

fn map(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = OrderedMap::new();
    for (k, v) in pairs {
        m.insert(Value::String(k.to_string()), v);
    }
    Value::Map(m)
}

/// Answer one `$management` request.
pub(crate) async fn answer(ctx: Arc<ConnCtx>, request: Message<Body<Value>>) -> Response {
    let eh = ctx.eventhub.clone();
    if app_prop(&request, "operation") != Some("READ") {
        return Response::error(400, "unsupported operation; $management takes READ");
    }
    let name = app_prop(&request, "name").unwrap_or_default();
    if !name.eq_ignore_ascii_case(&eh.name) {
        return Response::error(
            404,
            format!(
                "no Event Hub '{}' (this hub's is '{}')",
                crate::untrusted::Untrusted(name),
                eh.name
            ),
        );
    }
    let now = ctx.now_s();
    let authorized = match app_prop(&request, "security_token") {
        Some(token) => match check_token(&ctx.hub, token, None, now) {
            Ok(c) => {
                c.rights.contains(&Permission::ServiceConnect) && path_covers(&c.path, &eh.name)
            }
            Err(reason) => return Response::error(401, reason),
        },
        None => ctx.claims.covers(&eh.name, Permission::ServiceConnect, now),
    };
    if !authorized {
        return Response::error(401, "no token with ServiceConnect for this Event Hub");
    }
    match app_prop(&request, "type") {
        Some("com.microsoft:eventhub") => {
            let ids = (0..eh.partitions)
                .map(|p| Value::String(p.to_string()))
                .collect::<Vec<_>>();
            Response::ok(map(vec![
                ("name", Value::String(eh.name.clone())),
                ("type", Value::String("com.microsoft:eventhub".into())),
                (
                    "created_at",
                    Value::Timestamp(Timestamp::from_milliseconds(eh.created_ms)),
                ),
                ("partition_count", Value::Int(eh.partitions as i32)),
                ("partition_ids", Value::Array(Array::from(ids))),
            ]))
        }
        Some("com.microsoft:partition") => {
            let id = app_prop(&request, "partition").unwrap_or_default();
            let part = match id.parse::<u32>() {
                Ok(p) if p < eh.partitions && id == p.to_string() => p,
                _ => {
                    return Response::error(
                        404,
                        format!("no partition '{}'", crate::untrusted::Untrusted(id)),
                    );
                }
            };
            match eh.partition_info(&ctx.hub, part).await {
                Ok(i) => Response::ok(map(vec![
                    ("name", Value::String(eh.name.clone())),
                    ("type", Value::String("com.microsoft:partition".into())),
                    ("partition", Value::String(part.to_string())),
                    (
                        "begin_sequence_number",
                        Value::Long(i.begin_sequence_number),
                    ),
                    (
                        "last_enqueued_sequence_number",
                        Value::Long(i.last_sequence_number),
                    ),
                    (
                        "last_enqueued_offset",
                        Value::String(i.last_offset.to_string()),
                    ),
                    (
                        "last_enqueued_time_utc",
                        Value::Timestamp(Timestamp::from_milliseconds(i.last_enqueued_ms)),
                    ),
                    ("is_partition_empty", Value::Bool(i.is_empty)),
                ])),
                Err(e) => {
                    tracing::warn!(error = %e, "event hub: partition properties failed");
                    Response::error(500, "the hub could not read the partition")
                }
            }
        }
        _ => Response::error(
            400,
            "unsupported type; com.microsoft:eventhub or com.microsoft:partition",
        ),
    }
}
