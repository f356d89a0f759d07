//! The one integration-test binary. One module per feature; each owner adds its `mod` line.
//! Tests that exercise the CLI run the real binary (`env!("CARGO_BIN_EXE_azsim")`).

#[cfg(unix)]
mod cli_env_utf8;
mod cli_output;
mod dashboard;
mod dps;
mod firmware_loop;
mod fleet;
mod hub_activity;
mod hub_amqp;
mod hub_amqp_c2d;
mod hub_amqp_websocket;
mod hub_cli;
mod hub_clients;
mod hub_deadlines;
mod hub_device_amqp;
mod hub_durability;
mod hub_e2e;
mod hub_edge_identity;
mod hub_events;
mod hub_faults;
mod hub_feedback;
mod hub_file_upload;
mod hub_hardening;
mod hub_jobs;
mod hub_mqtt_rules;
mod hub_policies;
mod hub_query;
mod hub_service;
mod hub_strict;
mod hub_tier;
mod hub_tls_profile;
mod hub_websocket;
mod hub_websocket_limits;
mod hub_websocket_stop;
mod hub_x509;
mod python_e2e_suite;
mod real_hub;
mod run_hub;
mod run_mosquitto;
mod service_cli;
mod service_configurations;
mod service_node_sdk;
mod service_python_sdk;
mod support;
mod token;
