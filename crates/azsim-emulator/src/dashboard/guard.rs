//! Which requests the dashboard serves: those a page of its own origin (or a tool such as curl)
//! makes, not those another web page in the same browser makes.
//!
//! - `Host` must name this listener (`localhost`, `127.0.0.1`, `[::1]`, the hub's hostname or
//!   the bound address, with this port). A DNS-rebinding page points its own name at 127.0.0.1,
//!   so its requests carry its own name and are refused. On a TLS listener (beyond loopback)
//!   every API call carries the caller's token, so any name reaching it is served.
//! - A request the browser marks `Sec-Fetch-Site: cross-site` or `same-site` is refused: the
//!   page's own calls are `same-origin`, typing the address is `none`.
//! - A state-changing request (anything but GET, HEAD, OPTIONS) that carries `Origin` must
//!   carry the dashboard's own (`http[s]://` + its `Host`). Browsers send `Origin` with every
//!   such request; tools that send none are not browsers driven by someone else's page.

use std::net::IpAddr;

use axum::extract::Request;
use axum::http::{Method, header};

/// The `Host` values naming a listener on `ip:port` of a hub called `hostname`.
pub(super) fn allowed_hosts(ip: IpAddr, port: u16, hostname: &str) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "[::1]".to_string(),
        hostname.to_ascii_lowercase(),
    ];
    if !ip.is_unspecified() {
        names.push(match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        });
    }
    names.sort();
    names.dedup();
    names.into_iter().map(|n| format!("{n}:{port}")).collect()
}

/// `Ok` when the request may be served; otherwise why not (it goes into the 403 body and the
/// log: fixed strings, nothing the client sent).
pub(super) fn check(
    req: &Request,
    allowed_hosts: &[String],
    loopback: bool,
) -> Result<(), &'static str> {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .ok_or("the request has no Host header")?;
    if loopback && !allowed_hosts.contains(&host) {
        return Err("Host is not this dashboard (DNS rebinding?)");
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && (site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site"))
    {
        return Err("a request from another site");
    }
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && let Some(origin) = headers.get(header::ORIGIN) {
        let scheme = if loopback { "http" } else { "https" };
        let own = format!("{scheme}://{host}");
        let same = origin.to_str().is_ok_and(|o| o.eq_ignore_ascii_case(&own));
        if !same {
            return Err("Origin is not this dashboard");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn req(method: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().method(method).uri("/api/devices");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    fn hosts() -> Vec<String> {
        allowed_hosts(IpAddr::from([127, 0, 0, 1]), 8880, "MyHub")
    }

    #[test]
    fn loopback_names_with_this_port_are_the_allowed_hosts() {
        let h = hosts();
        for ok in [
            "localhost:8880",
            "127.0.0.1:8880",
            "[::1]:8880",
            "myhub:8880",
        ] {
            assert!(h.contains(&ok.to_string()), "{ok} in {h:?}");
        }
        assert!(!h.contains(&"localhost:8881".to_string()));
        let wild = allowed_hosts(IpAddr::from([0, 0, 0, 0]), 1, "h");
        assert!(!wild.iter().any(|n| n.starts_with("0.0.0.0")), "{wild:?}");
    }

    #[test]
    fn a_rebinding_host_is_refused_on_loopback_only() {
        let r = req("GET", &[("host", "evil.example:8880")]);
        assert!(check(&r, &hosts(), true).is_err());
        assert!(check(&r, &hosts(), false).is_ok());
        assert!(check(&req("GET", &[]), &hosts(), true).is_err());
        assert!(check(&req("GET", &[("host", "LOCALHOST:8880")]), &hosts(), true).is_ok());
    }

    #[test]
    fn state_changing_requests_need_the_dashboards_own_origin() {
        let h = hosts();
        let own = [
            ("host", "localhost:8880"),
            ("origin", "http://localhost:8880"),
        ];
        assert!(check(&req("PUT", &own), &h, true).is_ok());
        let other = [
            ("host", "localhost:8880"),
            ("origin", "http://evil.example"),
        ];
        assert!(check(&req("PUT", &other), &h, true).is_err());
        assert!(check(&req("DELETE", &other), &h, true).is_err());
        assert!(check(&req("GET", &other), &h, true).is_ok());
        let null = [("host", "localhost:8880"), ("origin", "null")];
        assert!(check(&req("POST", &null), &h, true).is_err());
        assert!(check(&req("POST", &[("host", "localhost:8880")]), &h, true).is_ok());
        let tls = [("host", "hub.lan:8880"), ("origin", "https://hub.lan:8880")];
        assert!(check(&req("PATCH", &tls), &h, false).is_ok());
    }

    #[test]
    fn cross_site_fetches_are_refused_even_when_safe() {
        let h = hosts();
        let r = req(
            "GET",
            &[("host", "localhost:8880"), ("sec-fetch-site", "cross-site")],
        );
        assert!(check(&r, &h, true).is_err());
        let r = req(
            "GET",
            &[
                ("host", "localhost:8880"),
                ("sec-fetch-site", "same-origin"),
            ],
        );
        assert!(check(&r, &h, true).is_ok());
    }
}
