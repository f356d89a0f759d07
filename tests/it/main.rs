//! The one integration-test binary. One module per feature; each owner adds its `mod` line.
//! Tests that exercise the CLI run the real binary (`env!("CARGO_BIN_EXE_azsim")`).
mod hub_e2e;
mod support;
mod run_mosquitto;
mod service_cli;
mod service_python_sdk;
mod token;
mod firmware_loop;
mod run_hub;
mod hub_mqtt_rules;
mod hub_service;
mod hub_events;
