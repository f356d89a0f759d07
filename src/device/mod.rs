//! The device side of `azsim run`: the tokio + rumqttc driver of `azsim-proto`'s sans-IO session
//! and reference device behaviour, its output, payload templates, and the diagnosis printed when
//! the hub refuses the credentials.

pub mod conn;
pub mod credentials;
pub mod diagnose;
pub mod driver;
pub mod embedded;
pub mod local_hub;
pub mod output;
pub mod template;
