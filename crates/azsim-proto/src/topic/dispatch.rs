//! Device-side dispatch: which of the hub's topics a received PUBLISH is. Part of [`crate::topic`]; see its docs for the encoding and the strict or
//! lenient decisions.

use super::*;

/// Anything the hub publishes to a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubTopic<'a> {
    /// A C2D message.
    C2d(C2dTopic<'a>),
    /// A module input message.
    ModuleInput(ModuleInputTopic<'a>),
    /// A direct-method request.
    MethodRequest(MethodRequest<'a>),
    /// A twin GET / reported-PATCH response.
    TwinResponse(TwinResponse<'a>),
    /// A desired-properties patch with its `$version`.
    DesiredPatch {
        /// The desired `$version` after this patch.
        version: u64,
    },
}

/// (device side) Parses any topic the hub publishes to a device.
///
/// # Errors
/// [`TopicError::NoMatch`] for an unknown topic, or the error of the matching parser.
pub fn parse_hub_publish(topic: &str) -> Result<HubTopic<'_>, TopicError> {
    if topic.starts_with(METHOD_REQUEST_PREFIX) {
        parse_method_request(topic).map(HubTopic::MethodRequest)
    } else if topic.starts_with(TWIN_RESPONSE_PREFIX) {
        parse_twin_response(topic).map(HubTopic::TwinResponse)
    } else if topic.starts_with(&TWIN_DESIRED_PREFIX[..TWIN_DESIRED_PREFIX.len() - 1]) {
        parse_desired_patch(topic).map(|version| HubTopic::DesiredPatch { version })
    } else if topic.starts_with("devices/") {
        match parse_module_input(topic) {
            Err(TopicError::NoMatch) => parse_c2d(topic).map(HubTopic::C2d),
            other => other.map(HubTopic::ModuleInput),
        }
    } else {
        Err(TopicError::NoMatch)
    }
}
