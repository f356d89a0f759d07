//! Link addresses and token audiences as clients write them: `amqps://host:port/path`,
//! `sb://host/path`, `host/path` or a bare `path` / `$node`. Everything here reduces one to the
//! host (when it has one) and the path segments after it, which is what the hub routes on and
//! what a CBS claim covers.

/// An address split into an optional host and its path (no leading `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address<'a> {
    pub host: Option<&'a str>,
    pub path: &'a str,
}

impl<'a> Address<'a> {
    /// `scheme://host[:port]/path` gives the host and path; anything without `://` is a path
    /// on this hub (leading `/` dropped).
    pub fn parse(s: &'a str) -> Address<'a> {
        match s.split_once("://") {
            Some((_, rest)) => {
                let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                Address {
                    host: Some(host),
                    path: path.trim_end_matches('/'),
                }
            }
            None => Address {
                host: None,
                path: s.trim_start_matches('/').trim_end_matches('/'),
            },
        }
    }

    /// Whether the host (if any) names this hub: `hostname` or `hostname:port`, any case.
    pub fn host_is(&self, hostname: &str) -> bool {
        match self.host {
            None => true,
            Some(h) => {
                let name = h.rsplit_once(':').map_or(h, |(n, p)| {
                    if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                        n
                    } else {
                        h
                    }
                });
                name.eq_ignore_ascii_case(hostname)
            }
        }
    }
}

/// Whether `claim` (a path) covers `path`: equal, empty (the whole hub), or a parent in whole
/// `/` segments. Entity and group names compare ignoring ASCII case, as Event Hubs names do.
pub(crate) fn path_covers(claim: &str, path: &str) -> bool {
    if claim.is_empty() {
        return true;
    }
    let mut want = path.split('/');
    claim
        .split('/')
        .all(|c| want.next().is_some_and(|p| p.eq_ignore_ascii_case(c)))
}

/// The Event Hubs name of the hub's built-in endpoint: the first label of its hostname
/// (`myhub` for `myhub.azure-devices.net`, `localhost` for `localhost`).
pub(crate) fn hub_name(hostname: &str) -> &str {
    hostname.split('.').next().unwrap_or(hostname)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_bare_paths_split_into_host_and_path() {
        let a =
            Address::parse("amqps://localhost:5671/localhost/ConsumerGroups/$Default/Partitions/0");
        assert_eq!(a.host, Some("localhost:5671"));
        assert_eq!(a.path, "localhost/ConsumerGroups/$Default/Partitions/0");
        assert!(a.host_is("LOCALHOST"));
        assert!(!a.host_is("other"));
        let a = Address::parse("sb://localhost/");
        assert_eq!((a.host, a.path), (Some("localhost"), ""));
        let a = Address::parse("$cbs");
        assert_eq!((a.host, a.path), (None, "$cbs"));
        let a = Address::parse("/messages/devicebound");
        assert_eq!(a.path, "messages/devicebound");
        assert!(a.host_is("anything"));
    }

    #[test]
    fn a_claim_covers_its_own_path_and_whole_segments_below_it() {
        assert!(path_covers("", "x/y"));
        assert!(path_covers("hub", "hub"));
        assert!(path_covers(
            "hub",
            "HUB/ConsumerGroups/$Default/Partitions/1"
        ));
        assert!(!path_covers("hub", "hubx/ConsumerGroups"));
        assert!(!path_covers("hub/a", "hub"));
        assert_eq!(hub_name("myhub.azure-devices.net"), "myhub");
        assert_eq!(hub_name("localhost"), "localhost");
    }
}
