//! The resource URI a token is signed for and grants access to: hub, device, module or DPS
//! registration.

use core::fmt;

/// What a token grants access to. `Display` writes the URI unencoded, as it is signed before
/// encoding: `myhub.azure-devices.net/devices/dev1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    /// `{host}`: the whole hub, signed with a policy key (`skn` required).
    Hub {
        /// The hub host name, for example `myhub.azure-devices.net`.
        host: &'a str,
    },
    /// `{host}/devices/{device_id}`.
    Device {
        /// The hub host name.
        host: &'a str,
        /// The device id.
        device_id: &'a str,
    },
    /// `{host}/devices/{device_id}/modules/{module_id}`.
    Module {
        /// The hub host name.
        host: &'a str,
        /// The device id.
        device_id: &'a str,
        /// The module id.
        module_id: &'a str,
    },
    /// `{id_scope}/registrations/{registration_id}`: a DPS registration.
    DpsRegistration {
        /// The DPS id scope, for example `0ne00000000`.
        id_scope: &'a str,
        /// The registration id.
        registration_id: &'a str,
    },
}

impl<'a> Resource<'a> {
    /// Recognises a decoded resource URI: `{host}`, `{host}/devices/{d}`,
    /// `{host}/devices/{d}/modules/{m}` or `{scope}/registrations/{r}`. Returns `None` for any
    /// other shape (an empty segment, an unknown collection, extra segments).
    pub fn parse(uri: &'a str) -> Option<Self> {
        let mut it = uri.split('/');
        let first = it.next().filter(|s| !s.is_empty())?;
        let parts = (it.next(), it.next(), it.next(), it.next(), it.next());
        let ok = |s: &str| !s.is_empty();
        match parts {
            (None, ..) => Some(Self::Hub { host: first }),
            (Some("devices"), Some(d), None, ..) if ok(d) => Some(Self::Device {
                host: first,
                device_id: d,
            }),
            (Some("devices"), Some(d), Some("modules"), Some(m), None) if ok(d) && ok(m) => {
                Some(Self::Module {
                    host: first,
                    device_id: d,
                    module_id: m,
                })
            }
            (Some("registrations"), Some(r), None, ..) if ok(r) => Some(Self::DpsRegistration {
                id_scope: first,
                registration_id: r,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Piece by piece rather than `write!`: the same text without the formatting machinery
        // in the firmware, which signs with this on every connect.
        let (first, middle, last, module) = match *self {
            Self::Hub { host } => return f.write_str(host),
            Self::Device { host, device_id } => (host, "/devices/", device_id, None),
            Self::Module {
                host,
                device_id,
                module_id,
            } => (host, "/devices/", device_id, Some(module_id)),
            Self::DpsRegistration {
                id_scope,
                registration_id,
            } => (id_scope, "/registrations/", registration_id, None),
        };
        f.write_str(first)?;
        f.write_str(middle)?;
        f.write_str(last)?;
        if let Some(m) = module {
            f.write_str("/modules/")?;
            f.write_str(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_parse_recognises_each_shape() {
        assert_eq!(Resource::parse("h"), Some(Resource::Hub { host: "h" }));
        assert_eq!(
            Resource::parse("h/devices/d/modules/m"),
            Some(Resource::Module {
                host: "h",
                device_id: "d",
                module_id: "m"
            })
        );
        assert_eq!(
            Resource::parse("s/registrations/r"),
            Some(Resource::DpsRegistration {
                id_scope: "s",
                registration_id: "r"
            })
        );
        assert_eq!(Resource::parse("h/devices/"), None);
        assert_eq!(Resource::parse("h/things/d"), None);
        assert_eq!(Resource::parse(""), None);
    }
}
