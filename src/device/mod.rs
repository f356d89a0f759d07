//! The device side of `azsim run`: the host driver of the one device loop (`azsim_mqtt::Client`,
//! the firmware's) over tokio and rustls, its output, payload templates, and the diagnosis
//! printed when the hub refuses the credentials.

pub mod buffer;
pub mod credentials;
pub mod diagnose;
pub mod driver;
pub mod embedded;
pub mod local_hub;
pub mod net;
pub mod output;
pub mod provision;
pub mod template;
