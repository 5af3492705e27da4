//! The pure checks that keep web pages out of the hub (issue 13), with no I/O: which `Host`
//! names the hub answers to (DNS rebinding), whether a write comes from a page of another
//! site (cross-site request forgery), and the tokens a request carries. `routes` applies
//! them to every request, on the HTTP workers.
//!
//! Why the `Host` check: a page on `http://evil.example:8080/` whose name the attacker then
//! points at 127.0.0.1 (or at the Pi's LAN address) is *same-origin* with the hub in the
//! browser's eyes, so it may read every answer. What gives it away is the `Host` header,
//! which still says `evil.example:8080`. An IP literal or `localhost` cannot be rebound.

use std::net::{IpAddr, SocketAddr};

/// The cookie that carries the read token for the dashboard (EventSource cannot send an
/// `Authorization` header).
pub(crate) const READ_COOKIE: &str = "tle_read";

/// What the hub may be called: the names a `Host` header may carry.
pub(crate) struct Names<'a> {
    /// The listener's address (its port is the one a `Host` port must match).
    pub(crate) bound: SocketAddr,
    /// Listening beyond loopback: the machine's own names and addresses count too.
    pub(crate) beyond_loopback: bool,
    /// The machine's names, lowercase (hostname, `<hostname>.local`).
    pub(crate) machine: &'a [String],
    /// The machine's interface addresses.
    pub(crate) addrs: &'a [IpAddr],
    /// `--allowed-host` names, as configured.
    pub(crate) allowed: &'a [String],
}

/// The host part of a `Host` header (or of an origin), split from its port.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HostName {
    /// An IP literal (`127.0.0.1`, `[::1]`).
    Ip(IpAddr),
    /// A name, lowercase, without a trailing dot.
    Name(String),
}

/// Parses `host[:port]` as a `Host` header carries it (RFC 9110 §7.2): a name, an IPv4
/// literal or a bracketed IPv6 literal. `None` for anything else (empty, userinfo, a path,
/// a bad port, a zone id).
pub(crate) fn parse_host(value: &str) -> Option<(HostName, Option<u16>)> {
    let value = value.trim();
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (HostName::Ip(IpAddr::V6(ip.parse().ok()?)), port)
    } else {
        let (host, port) = match value.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        let valid = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_';
        if host.is_empty() || !host.bytes().all(valid) {
            return None;
        }
        match host.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => (HostName::Ip(IpAddr::V4(ip)), port),
            Err(_) => (HostName::Name(host.to_ascii_lowercase()), port),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// An `--allowed-host` value as it is compared: a name lowercase without its trailing dot,
/// an IP literal as the address it names.
fn same_name(allowed: &str, host: &HostName) -> bool {
    match (parse_host(allowed), host) {
        (Some((a, _)), h) => a == *h,
        (None, _) => false,
    }
}

/// Whether `host` (a `Host` header's value) names this hub. Allowed: loopback literals
/// (127.0.0.0/8, `[::1]`), `localhost` and `*.localhost` (RFC 6761: browsers resolve them
/// to loopback themselves), the bound address, the `--allowed-host` names, and, when
/// listening beyond loopback, the machine's own names and addresses. A port, when given,
/// must be the bound port.
pub(crate) fn host_allowed(host: &str, names: &Names<'_>) -> bool {
    let Some((name, port)) = parse_host(host) else {
        return false;
    };
    if port.is_some_and(|p| p != names.bound.port()) {
        return false;
    }
    let known = match &name {
        HostName::Ip(ip) => {
            ip.is_loopback()
                || *ip == names.bound.ip()
                || (names.beyond_loopback && names.addrs.contains(ip))
        }
        HostName::Name(n) => {
            n == "localhost"
                || n.ends_with(".localhost")
                || (names.beyond_loopback && names.machine.iter().any(|m| m == n))
        }
    };
    known || names.allowed.iter().any(|a| same_name(a, &name))
}

/// Why a write (`POST`) must be refused as coming from another site's page, or `None`.
///
/// Refused: `Sec-Fetch-Site: cross-site` or `same-site` (another port or a sibling name of
/// this host is another origin, e.g. a different web app on the same Pi), or an `Origin`
/// that is not `http://` + the `Host` it was sent to; unless that `Origin` is one of
/// `cors` (`--cors-origin`), listed exactly as sent. No `Origin` and no `Sec-Fetch-Site`
/// (curl, scripts, old browsers' same-origin requests) is not refused here.
pub(crate) fn cross_site_write(
    origin: Option<&str>,
    fetch_site: Option<&str>,
    host: Option<&str>,
    cors: &[String],
) -> Option<String> {
    if origin.is_some_and(|o| cors.iter().any(|c| c == o)) {
        return None;
    }
    let site = fetch_site.map(|s| s.trim().to_ascii_lowercase());
    if let Some(site @ ("cross-site" | "same-site")) = site.as_deref() {
        return Some(format!(
            "writes from another site's page are refused (Sec-Fetch-Site: {site}); \
             list its origin with --cors-origin to allow it"
        ));
    }
    match origin {
        Some(o) if !same_origin(o, host) => Some(format!(
            "writes from another origin are refused (Origin: {}); list it with \
             --cors-origin to allow it",
            o.chars().take(100).collect::<String>()
        )),
        _ => None,
    }
}

/// Whether `origin` is `http://` + `host` (the hub speaks plain HTTP), ignoring case and a
/// default `:80` on either side. `Origin: null` never is.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let origin = origin.trim().to_ascii_lowercase();
    let Some(authority) = origin.strip_prefix("http://") else {
        return false;
    };
    match (parse_host(authority), parse_host(host)) {
        (Some((a, ap)), Some((b, bp))) => a == b && ap.unwrap_or(80) == bp.unwrap_or(80),
        _ => false,
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(authorization: Option<&str>) -> Option<&str> {
    authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The value of cookie `name` in `Cookie` headers (`a=1; b=2`), percent-decoded.
pub(crate) fn cookie<'a>(headers: impl IntoIterator<Item = &'a str>, name: &str) -> Option<String> {
    headers
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            percent_encoding::percent_decode_str(v.trim())
                .decode_utf8_lossy()
                .into_owned()
        })
}

/// A token as a cookie value: every byte but letters, digits and `-._~` percent-encoded
/// (a token may hold `;`, `,` or `"`, which a cookie value may not).
pub(crate) fn cookie_value(token: &str) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    const KEEP: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(token, KEEP).to_string()
}

/// Compares two tokens in time that depends on their lengths only, never on where they
/// first differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<'a>(bound: &str, machine: &'a [String], addrs: &'a [IpAddr]) -> Names<'a> {
        Names {
            bound: bound.parse().expect("a socket address"),
            beyond_loopback: !bound.starts_with("127.") && !bound.starts_with("[::1]"),
            machine,
            addrs,
            allowed: &[],
        }
    }

    #[test]
    fn host_values_parse_into_name_or_address_and_port() {
        use HostName::{Ip, Name};
        let ip = |s: &str| Ip(s.parse().expect("an address"));
        for (value, want) in [
            ("127.0.0.1:8080", Some((ip("127.0.0.1"), Some(8080)))),
            ("[::1]:8080", Some((ip("::1"), Some(8080)))),
            ("[::1]", Some((ip("::1"), None))),
            ("LocalHost", Some((Name("localhost".into()), None))),
            ("pi.local.:80", Some((Name("pi.local".into()), Some(80)))),
            ("", None),
            (":8080", None),
            ("a:", None),
            ("a:99999", None),
            ("a:+80", None),
            ("user@pi.local", None),
            ("pi.local/x", None),
            ("::1", None),
            ("[::1]8080", None),
            ("[fe80::1%25eth0]:80", None),
            ("a b", None),
        ] {
            assert_eq!(parse_host(value), want, "{value:?}");
        }
    }

    #[test]
    fn only_the_hubs_own_names_pass_the_host_check() {
        let machine = ["pi".to_owned(), "pi.local".to_owned()];
        let addrs: [IpAddr; 2] = [
            "192.168.1.20".parse().expect("v4"),
            "fd00::20".parse().expect("v6"),
        ];
        let loopback = names("127.0.0.1:8080", &machine, &addrs);
        let lan = names("0.0.0.0:8080", &machine, &addrs);
        // (Host, allowed on loopback, allowed on the LAN)
        for (host, on_loopback, on_lan) in [
            ("127.0.0.1:8080", true, true),
            ("127.0.0.1", true, true),
            ("127.9.9.9:8080", true, true),
            ("[::1]:8080", true, true),
            ("localhost:8080", true, true),
            ("cam.localhost:8080", true, true),
            ("localhost:8081", false, false),
            ("pi:8080", false, true),
            ("PI.local:8080", false, true),
            ("192.168.1.20:8080", false, true),
            ("[fd00::20]:8080", false, true),
            ("192.168.1.21:8080", false, false),
            ("evil.example:8080", false, false),
            ("localhost.evil.example:8080", false, false),
            ("pi.local.evil.example:8080", false, false),
            ("", false, false),
            ("  ", false, false),
        ] {
            assert_eq!(
                host_allowed(host, &loopback),
                on_loopback,
                "{host:?} on loopback"
            );
            assert_eq!(host_allowed(host, &lan), on_lan, "{host:?} on the LAN");
        }
        let bound = names("192.168.1.20:8080", &[], &[]);
        assert!(
            host_allowed("192.168.1.20:8080", &bound),
            "the bound address"
        );
        let allowed = ["Cams.Example.".to_owned(), "10.0.0.9".to_owned()];
        let proxied = Names {
            allowed: &allowed,
            ..names("127.0.0.1:8080", &[], &[])
        };
        for (host, ok) in [
            ("cams.example", true),
            ("cams.example:8080", true),
            ("cams.example:443", false),
            ("10.0.0.9:8080", true),
            ("www.cams.example", false),
        ] {
            assert_eq!(
                host_allowed(host, &proxied),
                ok,
                "{host} with --allowed-host"
            );
        }
    }

    #[test]
    fn writes_from_other_sites_are_refused_unless_their_origin_is_listed() {
        let cors = ["http://192.168.1.30:3000".to_owned()];
        let host = Some("pi.local:8080");
        // (Origin, Sec-Fetch-Site, refused)
        for (origin, site, refused) in [
            (None, None, false),
            (Some("http://pi.local:8080"), None, false),
            (Some("HTTP://PI.LOCAL:8080"), Some("same-origin"), false),
            (None, Some("none"), false),
            (Some("http://evil.example"), None, true),
            (Some("http://pi.local:3000"), None, true),
            (Some("https://pi.local:8080"), None, true),
            (Some("null"), None, true),
            (None, Some("cross-site"), true),
            (None, Some("same-site"), true),
            (Some("http://pi.local:8080"), Some("cross-site"), true),
            (Some("http://192.168.1.30:3000"), Some("cross-site"), false),
            (Some("http://192.168.1.30:3000"), None, false),
            (Some("http://192.168.1.30:3001"), None, true),
        ] {
            let why = cross_site_write(origin, site, host, &cors);
            assert_eq!(why.is_some(), refused, "{origin:?} {site:?}: {why:?}");
        }
        let port80 = cross_site_write(Some("http://pi.local"), None, Some("pi.local:80"), &[]);
        assert_eq!(port80, None, "a default port is the same origin");
        let no_host = cross_site_write(Some("http://pi.local"), None, None, &[]);
        assert!(
            no_host.is_some(),
            "no Host: nothing to be the same origin as"
        );
    }

    #[test]
    fn tokens_are_read_from_the_bearer_header_and_the_cookie() {
        assert_eq!(bearer(Some("Bearer abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(None), None);
        let token = "a;b,c\"d%e f";
        let value = cookie_value(token);
        assert!(
            value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"%-._~".contains(&b)),
            "{value}"
        );
        let header = format!("theme=dark; {READ_COOKIE}={value}; other=1");
        assert_eq!(
            cookie([header.as_str()], READ_COOKIE).as_deref(),
            Some(token)
        );
        assert_eq!(
            cookie(["a=1", "tle_read=x"], READ_COOKIE).as_deref(),
            Some("x")
        );
        assert_eq!(cookie(["xtle_read=1"], READ_COOKIE), None);
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
    }
}
