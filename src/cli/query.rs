//! `azsim query "SELECT ..."`: clap structs and validation. The work is in `crate::cmd::query`.

use clap::Args;

use super::service::HubTargetArgs;
use crate::error::UsageError;
use crate::service::Target;

/// The largest page the service API serves (`x-ms-max-item-count`; the local hub's cap).
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Run an IoT Hub query (device twins, `devices.modules`, `devices.jobs`) and print its rows,
/// following the continuation tokens page after page.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The query, e.g. "SELECT * FROM devices WHERE tags.site = 'oslo'".
    pub query: String,
    /// Stop after this many rows (default: all of them).
    #[arg(long, value_name = "N")]
    pub max_items: Option<u64>,
    /// Rows asked for per request (x-ms-max-item-count, 1..1000).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub page_size: u32,
    #[command(flatten)]
    pub target: HubTargetArgs,
    /// Print one compact JSON line per row instead of one pretty JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Validated `azsim query` arguments.
#[derive(Debug)]
pub struct QueryConfig {
    /// The hub.
    pub target: Target,
    /// The query text.
    pub query: String,
    /// Rows at most.
    pub max_items: Option<u64>,
    /// Rows per request.
    pub page_size: u32,
    /// JSON lines output.
    pub json: bool,
}

impl QueryArgs {
    /// Validates the arguments and resolves the hub.
    ///
    /// # Errors
    /// A [`UsageError`] naming the bad field.
    pub fn into_config(self) -> Result<QueryConfig, UsageError> {
        if self.query.trim().is_empty() {
            return Err(UsageError::new("QUERY", "must not be empty"));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&self.page_size) {
            return Err(UsageError::new(
                "--page-size",
                format!("must be between 1 and {MAX_PAGE_SIZE}"),
            ));
        }
        if self.max_items == Some(0) {
            return Err(UsageError::new("--max-items", "must be at least 1"));
        }
        Ok(QueryConfig {
            target: self.target.resolve()?,
            query: self.query,
            max_items: self.max_items,
            page_size: self.page_size,
            json: self.json,
        })
    }
}
