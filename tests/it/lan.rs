//! Tests: safe on a home LAN (issue 13). Web pages must not read or write the hub through
//! DNS rebinding (a hostile `Host`) or cross-site requests (a hostile `Origin`), the read
//! token guards every read route, and the dashboard page forbids inline code and framing.
//! Real TCP to hubs on ephemeral ports; every request is written by hand, so that `Host`
//! is exactly what the test says (or missing).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use timelapse_events::NewEvent;

use crate::support::{ChildHub, EmitOk, SseClient, TestHub, WAIT, sql_value};

/// An answer's status, headers and body (only the head for an event stream, which does
/// not end).
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn error(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body).unwrap_or_default()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Whether this answer gave the hub's data away, or stored something.
    fn gave_data_or_accepted(&self) -> bool {
        self.status < 300 && self.status != 204
    }
}

/// Sends `method target` to `addr` with `host` as the Host header (`None`: no Host line at
/// all), `extra` headers and `body`, then reads the answer.
fn ask(
    addr: SocketAddr,
    method: &str,
    target: &str,
    host: Option<&str>,
    extra: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if let Some(h) = host {
        req.push_str(&format!("Host: {h}\r\n"));
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).ok();
    s.write_all(req.as_bytes()).expect("send");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {target} Host {host:?}: no status in {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut a = Answer {
        status,
        headers,
        body: String::new(),
    };
    if a.header("Content-Type") == Some("text/event-stream; charset=utf-8") {
        return a; // a stream: its head is the answer
    }
    let len = a
        .header("Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("body");
    a.body = String::from_utf8_lossy(&body).into_owned();
    a
}

/// Every route, as (method, target, Content-Type, body).
const ROUTES: [(&str, &str, &str, &str); 12] = [
    ("GET", "/", "", ""),
    ("GET", "/dashboard.js", "", ""),
    ("GET", "/dashboard.css", "", ""),
    ("GET", "/dashboard-worker.js", "", ""),
    ("GET", "/favicon.ico", "", ""),
    ("GET", "/health", "", ""),
    ("GET", "/api/state", "", ""),
    ("GET", "/api/events", "", ""),
    ("GET", "/api/events/stats", "", ""),
    ("GET", "/metrics", "", ""),
    ("OPTIONS", "/api/events", "", ""),
    (
        "POST",
        "/api/events",
        "application/json",
        r#"{"type":"lan_probe","data":{}}"#,
    ),
];

fn send_route(addr: SocketAddr, route: (&str, &str, &str, &str), host: Option<&str>) -> Answer {
    let (method, target, content_type, body) = route;
    let extra: Vec<(&str, &str)> = if content_type.is_empty() {
        Vec::new()
    } else {
        vec![("Content-Type", content_type)]
    };
    ask(addr, method, target, host, &extra, body)
}

fn stored(hub: &TestHub, event_type: &str) -> i64 {
    let conn = rusqlite::Connection::open(hub.db_path()).expect("open the database");
    sql_value(
        &conn,
        &format!("SELECT count(*) FROM sse_events WHERE event_type = '{event_type}'"),
    )
}

/// The answers to hostile `Host` values on every route: each a `421` with the JSON error,
/// none with data, nothing stored.
fn assert_refused_everywhere(addr: SocketAddr, hosts: &[Option<String>], what: &str) -> usize {
    let mut answered = 0;
    let mut total = 0;
    for host in hosts {
        for route in ROUTES {
            let a = send_route(addr, route, host.as_deref());
            let name = format!("{} {} Host {host:?} ({what})", route.0, route.1);
            if host.is_none() && route.1 == "/favicon.ico" {
                // The liveness probe's exemption: an empty 204, nothing to read.
                assert_eq!((a.status, a.body.as_str()), (204, ""), "{name}");
                continue;
            }
            total += 1;
            assert_eq!(a.status, 421, "{name}: {}", a.body);
            assert_eq!(a.header("Content-Type"), Some("application/json"), "{name}");
            assert!(
                a.error().starts_with("misdirected request"),
                "{name}: {}",
                a.body
            );
            assert!(
                !a.body.contains("cursor") && !a.body.contains("<html"),
                "{name}"
            );
            if a.gave_data_or_accepted() {
                answered += 1;
            }
        }
    }
    println!(
        "hostile Host ({what}): {answered} of {total} requests answered with data or accepted"
    );
    assert_eq!(answered, 0);
    total
}

/// Every route answers normally to each allowed form of the hub's name.
fn assert_answered_everywhere(addr: SocketAddr, hosts: &[String], what: &str) {
    let mut ok = 0;
    let mut total = 0;
    for host in hosts {
        for route in ROUTES {
            let a = send_route(addr, route, Some(host));
            total += 1;
            let name = format!("{} {} Host {host} ({what})", route.0, route.1);
            let want = match route {
                ("POST", ..) => 201,
                ("OPTIONS", ..) | (_, "/favicon.ico", ..) => 204,
                _ => 200,
            };
            assert_eq!(a.status, want, "{name}: {}", a.body);
            ok += 1;
        }
    }
    println!("allowed Host ({what}): {ok} of {total} requests answered as usual");
}

fn hostile_hosts(port: u16) -> Vec<Option<String>> {
    vec![
        Some(format!("evil.example:{port}")),
        Some("evil.example".to_owned()),
        Some(format!("localhost.evil.example:{port}")),
        Some(format!("127.0.0.1:{}", port.wrapping_add(1).max(1))),
        Some(String::new()),
        None,
    ]
}

#[test]
fn hostile_hosts_get_421_on_every_route_of_a_loopback_hub() {
    let hub = TestHub::start();
    let port = hub.addr().port();
    assert_refused_everywhere(hub.addr(), &hostile_hosts(port), "loopback hub");
    assert_eq!(stored(&hub, "lan_probe"), 0, "no hostile POST was stored");
    // The machine's own names are not this hub's while it listens on loopback only.
    let own = hostname();
    if !own.is_empty() {
        let a = ask(
            hub.addr(),
            "GET",
            "/api/state",
            Some(&format!("{own}:{port}")),
            &[],
            "",
        );
        assert_eq!(a.status, 421, "hostname on a loopback hub");
    }
    assert_answered_everywhere(
        hub.addr(),
        &[
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
            format!("localhost:{port}"),
            format!("cam.localhost:{port}"),
            "localhost".to_owned(),
        ],
        "loopback hub",
    );
    // The liveness probe's request: no Host, HTTP/1.0, from loopback.
    let mut s = TcpStream::connect(hub.addr()).expect("connect");
    s.set_read_timeout(Some(WAIT)).ok();
    s.write_all(b"GET /favicon.ico HTTP/1.0\r\n\r\n")
        .expect("send");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(
        text.starts_with("HTTP/1.0 204") || text.starts_with("HTTP/1.1 204"),
        "{text}"
    );
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// This machine's non-loopback addresses that a socket can be connected to.
fn lan_addresses() -> Vec<IpAddr> {
    let out = std::process::Command::new("hostname").arg("-I").output();
    let listed = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    listed
        .split_whitespace()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback())
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
        .collect()
}

#[test]
fn a_hub_on_the_lan_answers_to_its_hostname_mdns_name_and_addresses_only() {
    let hub = TestHub::start_with(|c| {
        c.bind = ([0, 0, 0, 0], 0).into();
        c.token = Some("s3cret".into()); // posting beyond loopback needs one
        c.mdns = false; // a test announces nothing on this machine's real network
    });
    let port = hub.addr().port();
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let own = hostname();
    let addrs = lan_addresses();
    println!("this machine: hostname {own:?}, addresses {addrs:?}");
    let mut names = vec![format!("localhost:{port}"), format!("127.0.0.1:{port}")];
    if !own.is_empty() {
        names.push(format!("{own}:{port}"));
        names.push(format!("{own}.local:{port}"));
        names.push(format!("{}.LOCAL.:{port}", own.to_ascii_uppercase()));
    }
    for ip in &addrs {
        names.push(SocketAddr::new(*ip, port).to_string());
    }
    let mut answered = 0;
    for host in &names {
        for (method, target) in [
            ("GET", "/api/state"),
            ("GET", "/"),
            ("GET", "/api/events/stats"),
        ] {
            let a = ask(local, method, target, Some(host), &[], "");
            assert_eq!(a.status, 200, "{method} {target} Host {host}: {}", a.body);
            answered += 1;
        }
        let post = ask(
            local,
            "POST",
            "/api/events",
            Some(host),
            &[
                ("Content-Type", "application/json"),
                ("Authorization", "Bearer s3cret"),
            ],
            r#"{"type":"lan_ok","data":{}}"#,
        );
        assert_eq!(post.status, 201, "POST Host {host}: {}", post.body);
    }
    println!(
        "LAN hub: {answered} reads by {} own names answered 200",
        names.len()
    );
    // Real TCP over each LAN address, naming it.
    for ip in &addrs {
        let at = SocketAddr::new(*ip, port);
        match TcpStream::connect_timeout(&at, Duration::from_secs(2)) {
            Ok(_) => {
                let a = ask(at, "GET", "/api/state", Some(&at.to_string()), &[], "");
                assert_eq!(a.status, 200, "over {at}");
                let evil = ask(
                    at,
                    "GET",
                    "/api/state",
                    Some(&format!("evil.example:{port}")),
                    &[],
                    "",
                );
                assert_eq!(evil.status, 421, "evil Host over {at}");
            }
            Err(e) => println!("cannot reach {at} ({e}); checked over loopback only"),
        }
    }
    let mut hostile = hostile_hosts(port);
    hostile.push(Some(format!("{own}.evil.example:{port}")));
    hostile.push(Some(format!("192.0.2.1:{port}")));
    hostile.push(Some(format!("{own}:{}", port.wrapping_add(1).max(1))));
    assert_refused_everywhere(local, &hostile, "hub on 0.0.0.0");
    assert_eq!(stored(&hub, "lan_probe"), 0, "no hostile POST was stored");
}

#[test]
fn allowed_host_and_read_token_flags_and_env_vars_reach_the_binary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("events.db");
    let hub = ChildHub::start(
        &db,
        &["--allowed-host", "cams.example", "--read-token", "r34d"],
    );
    let port = hub.addr.port();
    let bearer = [("Authorization", "Bearer r34d")];
    let cams = format!("cams.example:{port}");
    assert_eq!(
        ask(hub.addr, "GET", "/api/state", Some(&cams), &bearer, "").status,
        200
    );
    assert_eq!(
        ask(hub.addr, "GET", "/api/state", Some(&cams), &[], "").status,
        401
    );
    let other = format!("other.example:{port}");
    assert_eq!(
        ask(hub.addr, "GET", "/api/state", Some(&other), &bearer, "").status,
        421
    );
    drop(hub);
    let env = [
        ("TIMELAPSE_EVENTS_ALLOWED_HOSTS", "a.example,b.example"),
        ("TIMELAPSE_EVENTS_READ_TOKEN", "env-r34d"),
    ];
    let hub = ChildHub::start_env(&db, "127.0.0.1:0", &[], &env);
    let port = hub.addr.port();
    for (host, token, status) in [
        ("a.example", "env-r34d", 200),
        ("b.example", "env-r34d", 200),
        ("a.example", "r34d", 401),
        ("c.example", "env-r34d", 421),
    ] {
        let auth = format!("Bearer {token}");
        let host = format!("{host}:{port}");
        let a = ask(
            hub.addr,
            "GET",
            "/api/state",
            Some(&host),
            &[("Authorization", &auth)],
            "",
        );
        assert_eq!(a.status, status, "Host {host} token {token}: {}", a.body);
    }
}

#[test]
fn cross_site_writes_get_403_listed_origins_pass_and_simple_posts_keep_their_415() {
    let listed = "http://192.168.1.30:3000";
    let hub = TestHub::start_with(|c| c.cors_origins = vec![listed.to_owned()]);
    let addr = hub.addr();
    let host = addr.to_string();
    let own = format!("http://{addr}");
    let json = ("Content-Type", "application/json");
    let post = |event_type: &str, headers: &[(&str, &str)]| {
        let body = format!(r#"{{"type":"{event_type}","data":{{}}}}"#);
        ask(addr, "POST", "/api/events", Some(&host), headers, &body)
    };
    let mut refused = 0;
    let hostile: [&[(&str, &str)]; 7] = [
        &[json, ("Origin", "http://evil.example")],
        &[json, ("Origin", "null")],
        &[
            json,
            ("Origin", &format!("http://localhost:{}", addr.port() + 1)),
        ],
        &[json, ("Origin", &format!("https://{addr}"))],
        &[json, ("Sec-Fetch-Site", "cross-site")],
        &[json, ("Sec-Fetch-Site", "same-site")],
        &[json, ("Origin", &own), ("Sec-Fetch-Site", "cross-site")],
    ];
    for headers in hostile {
        let a = post("cross_site", headers);
        assert_eq!(a.status, 403, "{headers:?}: {}", a.body);
        assert!(
            a.error().contains("--cors-origin"),
            "{headers:?}: {}",
            a.body
        );
        refused += 1;
    }
    // A page's simple POST (no preflight) still meets the 415 first.
    let mut unsupported = 0;
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let a = post(
            "cross_site",
            &[
                ("Content-Type", content_type),
                ("Origin", "http://evil.example"),
            ],
        );
        assert_eq!(a.status, 415, "{content_type}: {}", a.body);
        unsupported += 1;
    }
    let a = post(
        "cross_site",
        &[
            ("Origin", "http://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
    );
    assert_eq!(a.status, 415, "no Content-Type: {}", a.body);
    unsupported += 1;
    assert_eq!(
        stored(&hub, "cross_site"),
        0,
        "no cross-site write was stored"
    );
    println!(
        "cross-site writes: {refused} refused 403, {unsupported} simple ones refused 415, 0 of {} stored",
        refused + unsupported
    );
    // Same-origin pages, listed origins and plain clients may write.
    let same = post(
        "welcome",
        &[json, ("Origin", &own), ("Sec-Fetch-Site", "same-origin")],
    );
    assert_eq!(same.status, 201, "same origin: {}", same.body);
    let listed_post = post(
        "welcome",
        &[json, ("Origin", listed), ("Sec-Fetch-Site", "cross-site")],
    );
    assert_eq!(
        listed_post.status, 201,
        "listed origin: {}",
        listed_post.body
    );
    assert_eq!(
        listed_post.header("Access-Control-Allow-Origin"),
        Some(listed)
    );
    assert_eq!(listed_post.header("Vary"), Some("Origin"));
    let preflight = ask(
        addr,
        "OPTIONS",
        "/api/events",
        Some(&host),
        &[
            ("Origin", listed),
            ("Access-Control-Request-Method", "POST"),
        ],
        "",
    );
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("Access-Control-Allow-Origin"),
        Some(listed)
    );
    assert!(
        preflight
            .header("Access-Control-Allow-Methods")
            .is_some_and(|m| m.contains("POST"))
    );
    assert_eq!(post("welcome", &[json]).status, 201, "curl-like client");
    assert_eq!(stored(&hub, "welcome"), 3);
}

/// Every read route.
const READ_ROUTES: [&str; 9] = [
    "/",
    "/dashboard.js",
    "/dashboard.css",
    "/dashboard-worker.js",
    "/api/state",
    "/api/history",
    "/api/events",
    "/api/events/stats",
    "/metrics",
];

#[test]
fn the_read_token_guards_every_read_route_by_header_or_cookie() {
    let hub = TestHub::start_with(|c| {
        c.read_token = Some("r34d-t0k3n".into());
        c.token = Some("wr1te".into());
    });
    let addr = hub.addr();
    let host = addr.to_string();
    let get =
        |target: &str, headers: &[(&str, &str)]| ask(addr, "GET", target, Some(&host), headers, "");
    let mut refused = 0;
    let mut let_in = 0;
    for target in READ_ROUTES {
        for headers in [
            &[][..],
            &[("Authorization", "Bearer wrong")][..],
            &[("Authorization", "Bearer r34d-t0k3")][..],
            &[("Cookie", "tle_read=wrong")][..],
            &[("Authorization", "r34d-t0k3n")][..],
        ] {
            let a = get(target, headers);
            assert_eq!(a.status, 401, "{target} {headers:?}: {}", a.body);
            if target == "/" {
                assert!(
                    a.body.contains("<form") && !a.body.contains("id=\"cards\""),
                    "{}",
                    a.body
                );
            } else {
                assert!(a.error().contains("read token"), "{target}: {}", a.body);
                assert_eq!(a.header("WWW-Authenticate"), Some("Bearer"), "{target}");
            }
            refused += 1;
        }
        for headers in [
            &[("Authorization", "Bearer r34d-t0k3n")][..],
            &[("Cookie", "theme=dark; tle_read=r34d-t0k3n")][..],
            &[("Authorization", "Bearer wr1te")][..],
        ] {
            let a = get(target, headers);
            assert_eq!(a.status, 200, "{target} {headers:?}: {}", a.body);
            let_in += 1;
        }
    }
    println!(
        "read token: {refused} requests without it refused 401, {let_in} with it answered 200"
    );
    for open in ["/health", "/favicon.ico"] {
        assert!(get(open, &[]).status < 300, "{open} stays open");
    }
    // The read token never writes.
    let json = ("Content-Type", "application/json");
    let body = r#"{"type":"by_reader","data":{}}"#;
    let as_reader = ask(
        addr,
        "POST",
        "/api/events",
        Some(&host),
        &[json, ("Authorization", "Bearer r34d-t0k3n")],
        body,
    );
    assert_eq!(as_reader.status, 401);
    let with_cookie = ask(
        addr,
        "POST",
        "/api/events",
        Some(&host),
        &[json, ("Cookie", "tle_read=r34d-t0k3n")],
        body,
    );
    assert_eq!(with_cookie.status, 401);
    assert_eq!(stored(&hub, "by_reader"), 0);

    // The login: a wrong token gets the form again, the right one the cookie.
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let origin = ("Origin", format!("http://{addr}"));
    let origin = (origin.0, origin.1.as_str());
    let wrong = ask(
        addr,
        "POST",
        "/login",
        Some(&host),
        &[form, origin],
        "token=nope",
    );
    assert_eq!((wrong.status, wrong.header("Set-Cookie")), (401, None));
    let evil = ask(
        addr,
        "POST",
        "/login",
        Some(&host),
        &[form, ("Origin", "http://evil.example")],
        "token=r34d-t0k3n",
    );
    assert_eq!(
        (evil.status, evil.header("Set-Cookie")),
        (403, None),
        "login from another site"
    );
    let ok = ask(
        addr,
        "POST",
        "/login",
        Some(&host),
        &[form, origin],
        "token=r34d-t0k3n",
    );
    assert_eq!((ok.status, ok.header("Location")), (303, Some("/")));
    let set = ok.header("Set-Cookie").expect("a cookie").to_owned();
    println!("login sets: {set}");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(part), "{part} in {set}");
    }
    let cookie = set.split(';').next().expect("name=value").to_owned();
    // The cookie opens the live stream.
    let mut stream =
        SseClient::connect_with(addr, "/api/events", &[("Cookie", &cookie)], "HTTP/1.0");
    assert_eq!(stream.status, 200);
    let id = hub
        .emitter()
        .emit_ok(NewEvent::camera_status_changed(4, "online", "healthy"));
    let e = stream
        .next_event(WAIT)
        .expect("an event on the cookie's stream");
    assert_eq!(e.json()["id"], id.0);
    let refused_stream = SseClient::connect_with(addr, "/api/events", &[], "HTTP/1.0");
    assert_eq!(refused_stream.status, 401);
}

#[test]
fn the_dashboard_page_forbids_inline_code_other_sites_and_framing() {
    let hub = TestHub::start();
    let host = hub.addr().to_string();
    let page = ask(hub.addr(), "GET", "/", Some(&host), &[], "");
    let csp = page
        .header("Content-Security-Policy")
        .expect("a CSP")
        .to_owned();
    println!("dashboard CSP: {csp}");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{part} in {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(page.header("X-Frame-Options"), Some("DENY"));
    assert!(
        !page.body.contains("<script>") && !page.body.contains("<style"),
        "no inline code"
    );
    for (asset, mime) in [
        ("/dashboard.js", "text/javascript; charset=utf-8"),
        ("/dashboard.css", "text/css; charset=utf-8"),
    ] {
        assert!(page.body.contains(asset), "the page loads {asset}");
        let a = ask(hub.addr(), "GET", asset, Some(&host), &[], "");
        assert_eq!(
            (a.status, a.header("Content-Type")),
            (200, Some(mime)),
            "{asset}"
        );
    }
}
