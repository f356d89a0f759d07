//! SUBSCRIBE filters: the canonical ones a device writes and what the hub accepts. Part of [`crate::topic`]; see its docs for the encoding and the strict or
//! lenient decisions.

use super::*;

/// What a SUBSCRIBE filter asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionKind {
    /// C2D messages (device identities).
    C2d,
    /// Module input messages (module identities).
    ModuleInputs,
    /// Direct method requests.
    Methods,
    /// Twin GET / reported-PATCH responses.
    TwinResponses,
    /// Desired-property patches.
    DesiredPatches,
}

impl SubscriptionKind {
    /// The subscriptions a device (C2D, methods, twin) or a module (inputs, methods, twin) makes.
    pub const fn for_identity(id: Identity<'_>) -> &'static [Self] {
        match id.module_id {
            None => &[
                Self::C2d,
                Self::Methods,
                Self::TwinResponses,
                Self::DesiredPatches,
            ],
            Some(_) => &[
                Self::ModuleInputs,
                Self::Methods,
                Self::TwinResponses,
                Self::DesiredPatches,
            ],
        }
    }
}

/// Writes the canonical filter of `kind` for `id`: `devices/{d}/messages/devicebound/#`,
/// `devices/{d}/modules/{m}/inputs/#` or one of the `$iothub` constants.
///
/// # Errors
/// [`FilterError::Topic`] ([`TopicError::NotAllowed`]) for C2D with a module identity or module
/// inputs with a device identity; [`FilterError::Write`] when the writer fails.
pub fn write_filter<W: fmt::Write + ?Sized>(
    out: &mut W,
    kind: SubscriptionKind,
    id: Identity<'_>,
) -> Result<(), FilterError> {
    match (kind, id.module_id) {
        // `devices/{d}/` or `devices/{d}/modules/{m}/`, then the rest of the filter.
        (SubscriptionKind::C2d, None) | (SubscriptionKind::ModuleInputs, Some(_)) => {
            write_identity_base(out, id)?;
            out.write_str(if id.module_id.is_none() {
                "messages/devicebound/#"
            } else {
                "inputs/#"
            })?;
        }
        (SubscriptionKind::C2d | SubscriptionKind::ModuleInputs, _) => {
            return Err(FilterError::Topic(TopicError::NotAllowed));
        }
        (SubscriptionKind::Methods, _) => out.write_str(METHODS_FILTER)?,
        (SubscriptionKind::TwinResponses, _) => out.write_str(TWIN_RESPONSE_FILTER)?,
        (SubscriptionKind::DesiredPatches, _) => out.write_str(TWIN_DESIRED_FILTER)?,
    }
    Ok(())
}

/// Why [`write_filter`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterError {
    /// The kind does not apply to this identity.
    Topic(TopicError),
    /// The writer failed (a full buffer).
    Write,
}

impl From<fmt::Error> for FilterError {
    fn from(_: fmt::Error) -> Self {
        Self::Write
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Topic(e) => e.fmt(f),
            Self::Write => f.write_str("buffer too small for topic"),
        }
    }
}

impl core::error::Error for FilterError {}

/// Writes `devices/{device_id}/messages/devicebound/#`.
///
/// # Errors
/// Only the writer's own error.
pub fn write_c2d_filter<W: fmt::Write + ?Sized>(out: &mut W, device_id: &str) -> fmt::Result {
    out.write_str("devices/")?;
    out.write_str(device_id)?;
    out.write_str("/messages/devicebound/#")
}

/// Writes `devices/{device_id}/modules/{module_id}/inputs/#` (the Python SDK's filter).
///
/// # Errors
/// Only the writer's own error.
pub fn write_module_inputs_filter<W: fmt::Write + ?Sized>(
    out: &mut W,
    device_id: &str,
    module_id: &str,
) -> fmt::Result {
    write_module_base(out, device_id, module_id)?;
    out.write_str("inputs/#")
}

/// (hub side) Classifies a SUBSCRIBE filter sent by `id`.
///
/// Accepted: the canonical filters, plus `devices/{d}/messages/#` and [`C2D_WILDCARD_FILTER`] for
/// a device's C2D and `devices/{d}/modules/{m}/#` for module inputs.
///
/// # Errors
/// [`TopicError::NotAllowed`] for anything else, including another identity's topics.
pub fn classify_subscription(
    filter: &str,
    id: Identity<'_>,
) -> Result<SubscriptionKind, TopicError> {
    match filter {
        METHODS_FILTER => return Ok(SubscriptionKind::Methods),
        TWIN_RESPONSE_FILTER => return Ok(SubscriptionKind::TwinResponses),
        TWIN_DESIRED_FILTER => return Ok(SubscriptionKind::DesiredPatches),
        // Only the connection's own C2D is ever delivered under it, so the `+` widens nothing.
        C2D_WILDCARD_FILTER if id.module_id.is_none() => return Ok(SubscriptionKind::C2d),
        _ => {}
    }
    // A `+` or a non-trailing `#` would widen the filter to other devices' topics whatever the
    // identity's own id contains.
    if filter.contains('+') || filter.find('#').is_some_and(|i| i + 1 != filter.len()) {
        return Err(TopicError::NotAllowed);
    }
    let rest = strip_identity(filter, id).ok_or(TopicError::NotAllowed)?;
    match (id.module_id, rest) {
        (None, "messages/devicebound/#" | "messages/#") => Ok(SubscriptionKind::C2d),
        (Some(_), "inputs/#" | "#") => Ok(SubscriptionKind::ModuleInputs),
        _ => Err(TopicError::NotAllowed),
    }
}

/// Strips `devices/{d}/` (device) or `devices/{d}/modules/{m}/` (module) from `topic`.
pub(super) fn strip_identity<'t>(topic: &'t str, id: Identity<'_>) -> Option<&'t str> {
    let rest = topic
        .strip_prefix("devices/")?
        .strip_prefix(id.device_id)?
        .strip_prefix('/')?;
    match id.module_id {
        None => Some(rest),
        Some(m) => rest
            .strip_prefix("modules/")?
            .strip_prefix(m)?
            .strip_prefix('/'),
    }
}

pub(super) fn write_module_base<W: fmt::Write + ?Sized>(
    out: &mut W,
    device_id: &str,
    module_id: &str,
) -> fmt::Result {
    write_identity_base(out, Identity::module(device_id, module_id))
}

/// Writes `devices/{d}/` (device) or `devices/{d}/modules/{m}/` (module).
pub(super) fn write_identity_base<W: fmt::Write + ?Sized>(
    out: &mut W,
    id: Identity<'_>,
) -> fmt::Result {
    out.write_str("devices/")?;
    out.write_str(id.device_id)?;
    if let Some(m) = id.module_id {
        out.write_str("/modules/")?;
        out.write_str(m)?;
    }
    out.write_str("/")
}
