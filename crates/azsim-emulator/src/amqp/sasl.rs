//! SASL as the Azure services offer it: `MSSBCBS` and `ANONYMOUS` (the client authenticates
//! afterwards with CBS `put-token`) and `PLAIN` with `{policy}@sas.root.{hub}` as the user and
//! a SAS token as the password (the token then authorizes the connection as a CBS token
//! would). A failed PLAIN ends the SASL exchange with `auth`, which closes the connection.

use std::sync::Arc;

use fe2o3_amqp::acceptor::sasl_acceptor::{SaslAcceptor, SaslServerFrame};
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};

use super::cbs::{Claims, check_token};
use crate::hub::Hub;

const MSSBCBS: &str = "MSSBCBS";
const PLAIN: &str = "PLAIN";
const ANONYMOUS: &str = "ANONYMOUS";

/// One connection's SASL exchange; a PLAIN token's claim goes into `claims`.
#[derive(Clone)]
pub(crate) struct Sasl {
    pub hub: Arc<Hub>,
    pub claims: Arc<Claims>,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sasl")
    }
}

fn outcome(code: SaslCode) -> SaslServerFrame {
    SaslServerFrame::Outcome(SaslOutcome {
        code,
        additional_data: None,
    })
}

impl Sasl {
    /// `\0{policy}@sas.root.{hub}\0{token}` (authzid empty or absent).
    fn plain(&self, response: &[u8]) -> Result<(), String> {
        let mut parts = response.split(|b| *b == 0);
        let (_authzid, user, password) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(u), Some(p)) => (a, u, p),
            _ => return Err("malformed PLAIN response".into()),
        };
        let user = std::str::from_utf8(user).map_err(|_| "user name is not UTF-8")?;
        let password = std::str::from_utf8(password).map_err(|_| "password is not UTF-8")?;
        if let Some(dps) = crate::dps::amqp::plain(&self.claims.dps, user, password) {
            return dps;
        }
        let (policy, hub) = user
            .split_once("@sas.root.")
            .ok_or("user name is not {policy}@sas.root.{hub}")?;
        if !hub.eq_ignore_ascii_case(super::address::hub_name(&self.hub.cfg.hostname)) {
            return Err("user name names another hub".into());
        }
        let now = self.hub.clock().unix_ms() / 1000;
        let token = azsim_proto::sas::Token::parse(password)
            .map_err(|e| format!("malformed token: {e}"))?;
        if token.policy() != Some(policy) {
            return Err("token policy (skn) differs from the user name's".into());
        }
        let claim = check_token(&self.hub, password, None, now)?;
        self.claims.add(claim);
        Ok(())
    }
}

impl SaslAcceptor for Sasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![
            Symbol::from(MSSBCBS),
            Symbol::from(PLAIN),
            Symbol::from(ANONYMOUS),
        ])
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        match init.mechanism.as_str() {
            MSSBCBS | ANONYMOUS => outcome(SaslCode::Ok),
            PLAIN => {
                let response = init.initial_response.map(|b| b.into_vec());
                match self.plain(response.as_deref().unwrap_or_default()) {
                    Ok(()) => outcome(SaslCode::Ok),
                    Err(reason) => {
                        tracing::info!(%reason, "amqp: SASL PLAIN refused");
                        outcome(SaslCode::Auth)
                    }
                }
            }
            other => {
                tracing::info!(
                    mechanism = %crate::untrusted::Untrusted(other),
                    "amqp: unsupported SASL mechanism"
                );
                outcome(SaslCode::Auth)
            }
        }
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        // None of the offered mechanisms has a second round.
        outcome(SaslCode::Sys)
    }
}
