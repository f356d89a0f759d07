//! The service side of IoT Hub: an async REST client for the service API (api-version
//! 2021-04-12) and for the local hub's emulator-only endpoints, and the resolution of which hub
//! to talk to.
//!
//! What it does: device and module registry, twins, direct methods over HTTPS against `azsim hub` or a real
//! Azure IoT Hub, C2D feedback (receive/complete/abandon) against either; C2D send and feedback
//! over AMQP against either ([`amqp`]); the live event stream against `azsim hub` only. Tokens are signed by `azsim-proto`
//! (`sas`) from a policy connection string parsed by `azsim-proto` (`connection_string`); TLS is
//! `crate::tls::client_config` (ring). What it does not do: print anything; the `cmd` modules do.

pub mod amqp;
pub mod auth;
pub mod azure_error;
pub mod client;
pub mod eventhub;
pub mod events;
pub mod output;
pub mod target;

pub use auth::ServiceCredentials;
pub use azure_error::AzureError;
pub use client::{
    C2dRequest, FeedbackBatch, Identity, IntoIdentity, MethodRequest, MethodResult, ServiceClient,
    ServiceError,
};
pub use target::{Target, TargetInputs};
