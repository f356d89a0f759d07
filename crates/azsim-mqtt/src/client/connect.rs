//! CONNECT: the username, client id and a freshly signed token, and CONNACK.

use super::*;

/// A `fmt::Write` that only counts, and fails past its limit.
pub(super) struct Measure(pub(super) usize);

impl fmt::Write for Measure {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 = self.0.checked_sub(s.len()).ok_or(fmt::Error)?;
        Ok(())
    }
}

/// A `fmt::Write` that fails instead of truncating.
pub(super) struct Sink<'a, const N: usize>(pub(super) &'a mut String<N>);

impl<const N: usize> fmt::Write for Sink<'_, N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.push_str(s).map_err(|()| fmt::Error)
    }
}

impl<S: Sensor, Q: Storage> Core<'_, S, Q> {
    /// CONNECT with a freshly signed token, in `tx`. The token lives on this stack frame only
    /// and the driver wipes `tx` once it is written.
    #[inline(never)]
    pub(super) fn encode_connect<T: Buffer + ?Sized>(
        &self,
        params: ConnectParams,
        tx: &mut T,
    ) -> Option<usize> {
        let id = &self.identity;
        // One size for all three, so that one `Sink` is compiled.
        let mut client_id: String<TOKEN_LEN> = String::new();
        let mut user: String<TOKEN_LEN> = String::new();
        let mut token: String<TOKEN_LEN> = String::new();
        // Cannot fail: `new` measured all three.
        username::write_client_id(
            &mut Sink(&mut client_id) as &mut dyn fmt::Write,
            id.device_id,
            id.module_id,
        )
        .ok()?;
        username::write_username(
            &mut Sink(&mut user) as &mut dyn fmt::Write,
            id.host,
            id.device_id,
            id.module_id,
            env!("CARGO_PKG_VERSION"),
            id.model_id,
        )
        .ok()?;
        let password: Option<&[u8]> = match (&self.key, params.token_expiry, self.credential) {
            (Some(key), Some(exp), _) => {
                sas::sign_with_key(
                    &mut Sink(&mut token) as &mut dyn fmt::Write,
                    &resource(id),
                    key,
                    exp,
                    policy(self.credential),
                )
                .ok()?;
                Some(token.as_bytes())
            }
            (_, _, Credential::Token(t)) => Some(t.expose().as_bytes()),
            (_, _, Credential::Key(_) | Credential::PolicyKey { .. }) => None,
        };
        // Fixed header, protocol name, level, flags and keep-alive, and three length prefixes.
        tx.reserve(21 + client_id.len() + user.len() + password.map_or(0, <[u8]>::len));
        wire::encode_connect(
            &client_id,
            &user,
            password,
            params.keep_alive,
            params.clean_session,
            tx.slice(),
        )
    }

    /// CONNACK 0 arrived.
    pub(super) fn connected(&mut self, now: u64) {
        self.phase = Phase::Up;
        self.last_tx = now;
        self.ping_deadline = None;
        self.puback = None;
        self.session.handle_connected(now);
    }
}
