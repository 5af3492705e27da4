//! Tests: the dashboard as a camera owner uses it (issue 16), in real headless Chromium:
//! latest frames from `--images-dir`, names, the capture history's sparkline, stale and
//! offline cards, the readable log and its camera filter, the phone layout, forgetting a
//! camera, and axe-core's accessibility rules. The browser plumbing is `browser.rs`'s.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use timelapse_events::NewEvent;

use crate::browser::{Browser, browser_or_skip, card, open_live, shots_dir};
use crate::support::{EmitOk, TestHub, WAIT, http, wait_until};

/// A JPEG of `w`×`h`, as a capture program writes it: a sky that fades from `top` to
/// `bottom`, with a ground strip, so that a screenshot shows a picture.
pub(crate) fn write_jpeg(path: &Path, w: u16, h: u16, top: [u8; 3], bottom: [u8; 3]) {
    let (wu, hu) = (usize::from(w), usize::from(h));
    let mut px = Vec::with_capacity(wu * hu * 3);
    for y in 0..hu {
        for _ in 0..wu {
            if y * 5 > hu * 4 {
                px.extend([54, 84, 40]); // the ground
                continue;
            }
            for c in 0..3 {
                let t = y as f64 / hu as f64;
                px.push((f64::from(top[c]) * (1.0 - t) + f64::from(bottom[c]) * t) as u8);
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir for the image");
    }
    jpeg_encoder::Encoder::new_file(path, 85)
        .expect("create the image file")
        .encode(&px, w, h, jpeg_encoder::ColorType::Rgb)
        .expect("encode the image");
}

/// Inserts `image_captured` rows for `camera_id` `hours_ago` hours before now, as a local
/// producer writing its own `created_at` would; the hub dispatches and counts them.
pub(crate) fn past_captures(db: &Path, camera_id: i64, hours_ago: &[i64]) {
    let c = rusqlite::Connection::open(db).expect("open the hub's database");
    c.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    for h in hours_ago {
        c.execute(
            "INSERT INTO sse_events (event_type, event_data, created_at) VALUES ('image_captured', ?1, \
             strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2))",
            (
                json!({"camera_id": camera_id}).to_string(),
                format!("-{h} hours"),
            ),
        )
        .expect("insert a past capture");
    }
}

/// Waits until the hub has dispatched every row of its database.
fn wait_dispatched(db: &Path) {
    let c = rusqlite::Connection::open(db).expect("open the hub's database");
    assert!(
        wait_until(WAIT, || c
            .query_row(
                "SELECT count(*) FROM sse_events WHERE processed_at IS NULL",
                [],
                |r| r.get::<_, i64>(0)
            )
            .is_ok_and(|n| n == 0)),
        "the hub dispatched the past captures"
    );
}

/// The card's field `f` (a `data-field`) of camera `id`: its text, or null.
fn field(b: &mut Browser, tab: u64, id: i64, f: &str) -> Value {
    b.eval(
        tab,
        &format!(
            "document.querySelector('.card[data-camera-id=\"{id}\"] [data-field=\"{f}\"]')?.textContent ?? null"
        ),
    )
}

/// Runs axe-core in the tab; fails on any serious or critical violation.
fn axe_clean(b: &mut Browser, tab: u64, what: &str) {
    let found = b.must(json!({"cmd": "axe", "tab": tab}));
    let bad: Vec<&Value> = found
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .collect();
    assert!(bad.is_empty(), "axe-core, {what}: {bad:#?}");
}

fn choose(b: &mut Browser, tab: u64, select: &str, value: &str) {
    b.eval(
        tab,
        &format!(
            "(() => {{ const s = document.getElementById('{select}'); s.value = {};
               s.dispatchEvent(new Event('change')); }})()",
            json!(value)
        ),
    );
}

#[test]
fn an_owner_sees_frames_names_history_and_honest_cards_and_can_forget_one() {
    let Some(mut b) = browser_or_skip("an_owner_sees_frames_names_history_and_honest_cards") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).expect("mkdir images");
    let hub = TestHub::start_with(|c| c.images_dir = Some(images.clone()));
    let em = hub.emitter();

    // Loading says loading; an empty hub then says so.
    let page = http(hub.addr(), "GET", "/", &[], b"");
    assert!(page.text().contains("Loading cameras…"), "{}", page.text());
    assert!(
        page.text().contains("data-images=\"on\""),
        "{}",
        page.text()
    );
    let tab = open_live(&mut b, hub.addr());
    b.wait(
        tab,
        "document.getElementById('no-cams').textContent === 'No camera has reported yet.'
         && document.getElementById('no-cams').dataset.loading === 'false'",
        "an empty hub's page says no camera has reported",
    );

    // Camera 3 captured 5, 4, 2 and 1 hours ago, not 3 hours ago: a gap.
    past_captures(&hub.db_path(), 3, &[5, 4, 4, 2, 1]);
    wait_dispatched(&hub.db_path());
    write_jpeg(
        &images.join("camera-1/a.jpg"),
        320,
        180,
        [90, 150, 230],
        [250, 200, 150],
    );
    em.emit_ok(NewEvent::new(
        "camera_registered",
        json!({"camera_id": 1, "name": "Garden"}),
    ));
    em.emit_ok(NewEvent::camera_status_changed(1, "online", "healthy"));
    em.emit_ok(NewEvent::timelapse_status_changed(1, 11, "running"));
    em.emit_ok(NewEvent::new(
        "image_captured",
        json!({"camera_id": 1, "timelapse_id": 11, "image_count": 1289, "day_number": 9,
               "file_name": "camera-1/a.jpg"}),
    ));
    em.emit_ok(NewEvent::new(
        "camera_status_changed",
        json!({"camera_id": 2, "status": "online", "health_status": "healthy", "name": "Window"}),
    ));
    em.emit_ok(NewEvent::image_captured(2, 21, 40, 2));
    em.emit_ok(NewEvent::camera_status_changed(2, "offline", "unhealthy"));
    em.emit_ok(NewEvent::camera_status_changed(3, "online", "healthy"));
    em.emit_ok(NewEvent::timelapse_status_changed(3, 31, "running"));
    em.emit_ok(NewEvent::image_captured(3, 31, 77, 1));
    // What the watchdog says of a running camera that fell silent.
    em.emit_ok(NewEvent::new(
        "camera_stale",
        json!({"camera_id": 3, "silent_secs": 900, "expected_interval_secs": 60}),
    ));

    b.wait(
        tab,
        "document.querySelectorAll('.card').length === 3",
        "three cards",
    );
    // Names.
    b.wait(
        tab,
        "document.querySelector('.card[data-camera-id=\"1\"] h3').textContent === 'Garden'",
        "camera 1 is called Garden",
    );
    assert_eq!(field(&mut b, tab, 1, "sub"), "camera 1");
    b.wait(
        tab,
        "document.querySelector('.card[data-camera-id=\"2\"] h3').textContent === 'Window'",
        "camera 2 is called Window",
    );
    assert_eq!(card(&mut b, tab, 3)["title"], "Camera 3", "unnamed");
    // The latest frame, then the next one in its place.
    const FRAME: &str = "document.querySelector('.card[data-camera-id=\"1\"] .frame img')";
    b.wait(
        tab,
        &format!("{FRAME}.complete && {FRAME}.naturalWidth === 320 && !{FRAME}.hidden"),
        "camera 1 shows its latest frame",
    );
    assert_eq!(
        b.eval(tab, &format!("{FRAME}.alt")),
        "Latest frame of Garden"
    );
    write_jpeg(
        &images.join("camera-1/b.jpg"),
        160,
        90,
        [20, 30, 80],
        [200, 90, 60],
    );
    let next = em.emit_ok(NewEvent::new(
        "image_captured",
        json!({"camera_id": 1, "timelapse_id": 11, "image_count": 1290, "day_number": 9,
               "file_name": "camera-1/b.jpg"}),
    ));
    b.wait(
        tab,
        &format!("{FRAME}.complete && {FRAME}.naturalWidth === 160"),
        "the next capture's frame replaces it",
    );
    assert_eq!(field(&mut b, tab, 1, "image_count"), "1,290");

    // Honest cards: offline since, stale for, dimmed; the good one is not.
    let offline = b.wait(
        tab,
        "(() => { const c = document.querySelector('.card[data-camera-id=\"2\"]');
           return c.dataset.state === 'offline' && c.querySelector('[data-field=\"state\"]').textContent; })()",
        "camera 2 is offline",
    );
    let offline = offline.as_str().unwrap_or_default();
    assert!(
        offline.starts_with("Offline since ") && offline.ends_with(" s)"),
        "{offline}"
    );
    let stale = b.wait(
        tab,
        "(() => { const c = document.querySelector('.card[data-camera-id=\"3\"]');
           return c.dataset.state === 'stale' && c.querySelector('[data-field=\"state\"]').textContent; })()",
        "camera 3 is stale",
    );
    assert!(
        stale.as_str().is_some_and(|t| t.starts_with("Stale for ")),
        "{stale}"
    );
    // The sparkline shows the gap three hours ago.
    let served = http(hub.addr(), "GET", "/api/history?camera_id=3", &[], b"").json();
    let counted: Vec<String> = served["cameras"][0]["hourly"]
        .as_array()
        .into_iter()
        .flatten()
        .map(Value::to_string)
        .collect();
    let hourly = b.wait(
        tab,
        &format!(
            "(() => {{ const h = document.querySelector('.card[data-camera-id=\"3\"] [data-field=\"history\"]')?.dataset.hourly;
               return h === '{}' && h; }})()",
            counted.join(",")
        ),
        "camera 3 draws the history the hub counted",
    );
    let hourly: Vec<i64> = hourly
        .as_str()
        .unwrap_or_default()
        .split(',')
        .map(|n| n.parse().expect("a count"))
        .collect();
    assert_eq!(hourly.len(), 24, "{hourly:?}");
    // (Were the rows written across the turn of an hour, the pattern would shift by one.)
    assert_eq!(
        hourly[18..],
        [1, 2, 0, 1, 1, 1],
        "5, 4 (twice), 2 and 1 hours ago, and now: {hourly:?}"
    );
    assert_eq!(
        b.eval(
            tab,
            "(() => { const s = document.querySelector('.card[data-camera-id=\"3\"] [data-field=\"history\"]');
               return [s.dataset.gaps, s.querySelectorAll('svg:first-of-type rect.gap').length,
                       s.getAttribute('aria-label')]; })()"
        ),
        json!(["1", 1, "6 captures in the last 24 hours, 1 hour without one; 6 in 30 days"]),
    );

    let looks = b.eval(
        tab,
        "[1, 2, 3].map(id => { const c = document.querySelector('.card[data-camera-id=\"' + id + '\"]');
           const s = getComputedStyle(c), svg = c.querySelector('.spark svg');
           return [c.dataset.state, s.backgroundColor, svg ? getComputedStyle(svg).opacity : null]; })",
    );
    let looks: Vec<(String, String, Option<String>)> =
        serde_json::from_value(looks).expect("card looks");
    assert_eq!(looks[0].0, "ok", "{looks:?}");
    assert_ne!(looks[0].1, looks[1].1, "offline dims: {looks:?}");
    assert_ne!(looks[0].1, looks[2].1, "stale dims: {looks:?}");
    assert_eq!(looks[2].2.as_deref(), Some("0.45"), "{looks:?}");

    // The log in words, its JSON behind a disclosure.
    let line = b.eval(
        tab,
        &format!(
            "(() => {{ const li = document.querySelector('#log li[data-id=\"{}\"]');
               return [li.querySelector('.line').textContent, li.querySelector('details').open,
                       li.querySelector('details pre').textContent.includes('camera-1/b.jpg')]; }})()",
            next.0
        ),
    );
    assert_eq!(
        line,
        json!(["Garden captured image 1,290, day 9", false, true])
    );
    // The camera filter.
    choose(&mut b, tab, "camera-filter", "2");
    b.wait(
        tab,
        "(() => { const rows = [...document.querySelectorAll('#log li[data-seq]')];
           return rows.length === 3 && rows.every(li => li.dataset.camera === '2'); })()",
        "only camera 2's three events under the camera filter",
    );
    choose(&mut b, tab, "camera-filter", "");
    b.wait(
        tab,
        "document.querySelectorAll('#log li[data-camera=\"3\"]').length >= 3",
        "every camera again",
    );

    // A page loaded now gets the same from /api/state.
    let fresh = b.open(&format!("http://{}/", hub.addr()), 1)[0];
    b.wait(
        fresh,
        "document.querySelectorAll('.card').length === 3
         && document.querySelector('.card[data-camera-id=\"2\"]').dataset.state === 'offline'
         && document.querySelector('.card[data-camera-id=\"1\"] h3').textContent === 'Garden'
         && document.querySelector('.card[data-camera-id=\"3\"] [data-field=\"state\"]').textContent.startsWith('Stale for ')
         && document.querySelector('.card[data-camera-id=\"1\"] .frame img').naturalWidth === 160",
        "a fresh page shows names, states and the frame from the hub's state",
    );

    // Accessibility: light, dark, and a phone.
    axe_clean(&mut b, tab, "wide, light");
    b.must(json!({"cmd": "color_scheme", "tab": tab, "scheme": "dark"}));
    axe_clean(&mut b, tab, "wide, dark");
    b.must(json!({"cmd": "color_scheme", "tab": tab, "scheme": "light"}));

    // A phone: the cameras first, two to a row, the log one tap away.
    b.must(json!({"cmd": "viewport", "tab": tab, "width": 390, "height": 844}));
    let phone = b.wait(
        tab,
        "(() => { const cs = [...document.querySelectorAll('#cards .card')].map(c => c.getBoundingClientRect());
           const log = document.getElementById('log-panel').getBoundingClientRect();
           const jump = document.querySelector('.jump a[href=\"#log-h\"]');
           return cs.length === 3 && [cs[0].top === cs[1].top, cs[2].top > cs[0].top,
             cs.every(r => r.bottom <= log.top), cs[0].bottom < innerHeight,
             jump !== null && jump.offsetParent !== null,
             document.documentElement.scrollWidth <= document.documentElement.clientWidth]; })()",
        "the phone layout",
    );
    assert_eq!(
        phone,
        json!([true, true, true, true, true, true]),
        "two cards a row, all above the log, the first on screen, a Log link, no sideways scroll"
    );
    b.eval(
        tab,
        "document.querySelector('.jump a[href=\"#log-h\"]').click()",
    );
    b.wait(
        tab,
        "(() => { const r = document.getElementById('log-h').getBoundingClientRect();
           return r.top >= 0 && r.top < innerHeight; })()",
        "one tap on Log shows the log",
    );
    axe_clean(&mut b, tab, "phone");
    b.screenshot(tab, &shots_dir().join("owner-phone.png"));
    b.must(json!({"cmd": "viewport", "tab": tab, "width": 1280, "height": 800}));

    // Forget camera 2: the card goes, in both tabs, and the hub forgets it.
    b.eval(
        tab,
        "document.querySelector('.card[data-camera-id=\"2\"] button.forget').click()",
    );
    b.wait(
        tab,
        "!document.querySelector('.card[data-camera-id=\"2\"] .ask').hidden",
        "forget asks first",
    );
    b.eval(
        tab,
        "document.querySelector('.card[data-camera-id=\"2\"] .ask button.danger').click()",
    );
    for t in [tab, fresh] {
        b.wait(
            t,
            "document.querySelector('.card[data-camera-id=\"2\"]') === null
             && document.querySelectorAll('.card').length === 2",
            "camera 2's card is gone",
        );
    }
    let state = http(hub.addr(), "GET", "/api/state", &[], b"").json();
    let left: Vec<i64> = state["cameras"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["camera_id"].as_i64())
        .collect();
    assert_eq!(left, vec![1, 3], "{state}");
    assert_eq!(
        b.wait(
            tab,
            "document.querySelector('#log li[data-type=\"camera_forgotten\"] .line')?.textContent",
            "the log says camera 2 was forgotten",
        ),
        "Window was forgotten"
    );
    b.assert_no_page_errors("no errors in the pages");
}

/// A camera of the screenshot: id, name, its sky at the top and at the horizon, and the
/// hours of the last day it captured in.
type Look = (i64, &'static str, [u8; 3], [u8; 3], Vec<i64>);

#[test]
fn screenshot_of_four_cameras_with_frames_history_and_a_stale_one() {
    let Some(mut b) = browser_or_skip("screenshot_of_four_cameras_with_frames_history") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).expect("mkdir images");
    let hub = TestHub::start_with(|c| {
        c.images_dir = Some(images.clone());
        c.stale_floor = Duration::from_secs(2);
    });
    let em = hub.emitter();
    let look: [Look; 4] = [
        (
            1,
            "Garden",
            [70, 130, 220],
            [200, 225, 250],
            (1..24).collect(),
        ),
        (
            2,
            "Driveway",
            [110, 90, 170],
            [250, 170, 110],
            (1..24).collect(),
        ),
        (
            3,
            "Workshop",
            [60, 110, 190],
            [230, 230, 240],
            (1..24).filter(|h| !(9..=11).contains(h)).collect(),
        ),
        (4, "Balcony", [15, 20, 50], [60, 50, 90], (5..24).collect()),
    ];
    // A day of history and one capture now per camera, in one transaction: the watchdog
    // never sees a camera whose last capture is hours old.
    {
        let mut c = rusqlite::Connection::open(hub.db_path()).expect("open the database");
        c.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        let tx = c.transaction().expect("begin");
        for (cam, _, _, _, hours) in &look {
            for h in hours {
                // One capture every five minutes of that hour.
                for m in (2..60).step_by(5) {
                    tx.execute(
                        "INSERT INTO sse_events (event_type, event_data, created_at) VALUES \
                         ('image_captured', ?1, strftime('%Y-%m-%dT%H:%M:%fZ', \
                          strftime('%Y-%m-%d %H:00:00', 'now', ?2), ?3))",
                        (
                            json!({"camera_id": cam}).to_string(),
                            format!("-{h} hours"),
                            format!("+{m} minutes"),
                        ),
                    )
                    .expect("insert a past capture");
                }
            }
        }
        tx.commit().expect("commit");
    }
    wait_dispatched(&hub.db_path());
    for (cam, name, top, bottom, _) in &look {
        write_jpeg(
            &images.join(format!("camera-{cam}/frame.jpg")),
            320,
            180,
            *top,
            *bottom,
        );
        em.emit_ok(NewEvent::new(
            "camera_registered",
            json!({"camera_id": cam, "name": name}),
        ));
        em.emit_ok(NewEvent::camera_status_changed(*cam, "online", "healthy"));
        em.emit_ok(NewEvent::timelapse_status_changed(
            *cam,
            100 + cam,
            "running",
        ));
    }
    // A quick run of captures of all four teaches the watchdog a short interval.
    for n in 0..30 {
        for cam in 1..=4 {
            em.emit_ok(NewEvent::new(
                "image_captured",
                json!({"camera_id": cam, "timelapse_id": 100 + cam, "image_count": 400 * cam + n,
                       "day_number": 3 * cam, "file_name": format!("camera-{cam}/frame.jpg")}),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    em.emit_ok(NewEvent::camera_status_changed(2, "online", "degraded"));
    em.emit_ok(NewEvent::timelapse_status_changed(4, 104, "paused"));
    em.emit_ok(NewEvent::camera_status_changed(4, "offline", "unhealthy"));
    // Garden and Driveway go on capturing; Workshop falls silent while running, and the
    // watchdog flags it; Balcony is offline with its timelapse paused, never flagged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let capturing = {
        let (em, stop) = (em.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for cam in [1, 2] {
                    em.emit_ok(NewEvent::new(
                        "image_captured",
                        json!({"camera_id": cam, "timelapse_id": 100 + cam,
                               "image_count": 400 * cam + 30 + n, "day_number": 3 * cam,
                               "file_name": format!("camera-{cam}/frame.jpg")}),
                    ));
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let tab = open_live(&mut b, hub.addr());
    b.wait(
        tab,
        "(() => { const s = id => document.querySelector('.card[data-camera-id=\"' + id + '\"]')?.dataset.state;
           return s(1) === 'ok' && s(2) === 'ok' && s(3) === 'stale' && s(4) === 'offline'
             && [...document.querySelectorAll('.card .frame img')].every(i => i.naturalWidth === 320)
             && document.querySelectorAll('.card .spark:not([hidden])').length === 4; })()",
        "two capturing, one flagged stale by the watchdog, one offline and paused",
    );
    assert_eq!(
        b.eval(
            tab,
            "document.querySelector('.card[data-camera-id=\"4\"] [data-field=\"stale\"]').hidden"
        ),
        json!(true),
        "an offline camera with a paused timelapse is not stale"
    );
    std::thread::sleep(Duration::from_millis(700)); // a frame for the last captures
    let shots = shots_dir();
    let wide = shots.join("dashboard.png");
    b.screenshot(tab, &wide);
    b.must(json!({"cmd": "color_scheme", "tab": tab, "scheme": "dark"}));
    b.screenshot(tab, &shots.join("dashboard-dark.png"));
    b.must(json!({"cmd": "color_scheme", "tab": tab, "scheme": "light"}));
    b.must(json!({"cmd": "viewport", "tab": tab, "width": 390, "height": 844}));
    assert_eq!(
        b.eval(
            tab,
            "document.documentElement.scrollWidth > document.documentElement.clientWidth"
        ),
        json!(false),
        "no sideways scrolling on a phone"
    );
    std::thread::sleep(Duration::from_millis(300));
    let phone = shots.join("dashboard-phone.png");
    b.must(json!({"cmd": "screenshot", "tab": tab, "path": phone, "full_page": false}));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    capturing.join().expect("the capturing thread");
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    for (shot, name) in [(&wide, "dashboard.png"), (&phone, "dashboard-phone.png")] {
        let to = docs.join(name);
        if std::env::var("TLE_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") || !to.exists() {
            std::fs::create_dir_all(&docs).expect("mkdir docs");
            std::fs::copy(shot, &to).expect("copy the screenshot to docs/");
        }
    }
    eprintln!("dashboard screenshots in {}", shots.display());
    b.assert_no_page_errors("no errors in the page");
}
