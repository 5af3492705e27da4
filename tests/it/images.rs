//! Tests: `GET /api/cameras/<id>/latest` with `--images-dir`, over real HTTP, on real files
//! in temp dirs: what is served and with which headers, a new capture swapping the bytes,
//! and every name that must not be served (out of the directory, not an image, too big,
//! gone, not ours) answered alike, with nothing from outside the directory in any body.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::json;
use timelapse_events::{Config, Hub, NewEvent};

use crate::support::{EmitOk, HttpResponse, TestHub, WAIT, http, wait_until};

/// A small JPEG by its markers: SOI, an APP0 segment, `fill`, EOI.
fn jpeg(fill: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
    bytes.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
    bytes.extend_from_slice(fill);
    bytes.extend_from_slice(&[0xFF, 0xD9]);
    bytes
}

/// A hub serving `images` (a fresh temp dir); `tweak` sets more of its config.
fn hub_with_images(tweak: impl FnOnce(&mut Config)) -> (TestHub, tempfile::TempDir) {
    let images = tempfile::tempdir().expect("images dir");
    let dir = images.path().to_owned();
    let hub = TestHub::start_with(|c| {
        c.images_dir = Some(dir);
        tweak(c);
    });
    (hub, images)
}

/// This host's camera `camera`'s `image_seq` in `/api/state`.
fn image_seq(addr: SocketAddr, camera: i64, auth: &[(&str, &str)]) -> Option<i64> {
    let state = http(addr, "GET", "/api/state", auth, b"").json();
    state["cameras"]
        .as_array()?
        .iter()
        .find(|c| c["camera_id"] == camera && c.get("host").is_none())?["image_seq"]
        .as_i64()
}

/// Emits an `image_captured` for `camera` with `data`'s fields, and waits until the state
/// shows it (its `image_seq` moved).
fn capture(hub: &TestHub, camera: i64, data: serde_json::Value, auth: &[(&str, &str)]) {
    let before = image_seq(hub.addr(), camera, auth);
    let mut event = NewEvent::new("image_captured", json!({"camera_id": camera}));
    if let (Some(into), Some(from)) = (event.data.as_object_mut(), data.as_object()) {
        into.extend(from.clone());
    }
    hub.emitter().emit_ok(event);
    assert!(
        wait_until(WAIT, || {
            let now = image_seq(hub.addr(), camera, auth);
            now.is_some() && now != before
        }),
        "camera {camera}'s image_seq did not move"
    );
}

fn latest(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http(addr, "GET", target, headers, b"")
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("parent dir");
    }
    std::fs::write(path, bytes).expect("write a file");
}

#[test]
fn a_capture_is_served_with_its_type_and_tag_then_304_and_the_next_capture_swaps_it() {
    let (hub, images) = hub_with_images(|_| {});
    let first = jpeg(b"frame one");
    write(&images.path().join("camera-1/img_000001.jpg"), &first);
    capture(
        &hub,
        1,
        json!({"file_name": "camera-1/img_000001.jpg"}),
        &[],
    );
    let r = latest(hub.addr(), "/api/cameras/1/latest", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("Content-Type"), Some("image/jpeg"));
    assert_eq!(r.header("Cache-Control"), Some("no-cache"));
    assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(r.body, first);
    let tag = r.header("ETag").expect("an ETag").to_owned();
    let again = latest(
        hub.addr(),
        "/api/cameras/1/latest",
        &[("If-None-Match", &tag)],
    );
    assert_eq!((again.status, again.body.len()), (304, 0));
    assert_eq!(again.header("ETag"), Some(tag.as_str()));
    let seq = image_seq(hub.addr(), 1, &[]).expect("an image_seq");
    let by_seq = latest(hub.addr(), &format!("/api/cameras/1/latest?seq={seq}"), &[]);
    assert_eq!((by_seq.status, &by_seq.body), (200, &first));

    let second = jpeg(b"frame two, a little longer");
    write(&images.path().join("camera-1/img_000002.jpg"), &second);
    capture(
        &hub,
        1,
        json!({"file_name": "camera-1/img_000002.jpg"}),
        &[],
    );
    let r = latest(
        hub.addr(),
        "/api/cameras/1/latest",
        &[("If-None-Match", &tag)],
    );
    assert_eq!((r.status, &r.body), (200, &second), "the old tag is stale");
    assert_ne!(r.header("ETag"), Some(tag.as_str()));
    assert!(image_seq(hub.addr(), 1, &[]) > Some(seq));

    // A thumbnail, when the event names one, is served instead of the full frame.
    let thumb = jpeg(b"small");
    write(
        &images.path().join("camera-1/thumbs/img_000003.jpg"),
        &thumb,
    );
    write(
        &images.path().join("camera-1/img_000003.jpg"),
        &jpeg(b"large"),
    );
    let names = json!({
        "file_name": "camera-1/img_000003.jpg",
        "thumbnail": "camera-1/thumbs/img_000003.jpg",
    });
    capture(&hub, 1, names, &[]);
    let r = latest(hub.addr(), "/api/cameras/1/latest", &[]);
    assert_eq!((r.status, &r.body), (200, &thumb));

    // The state document never carries the names.
    let state = http(hub.addr(), "GET", "/api/state", &[], b"").text();
    assert!(!state.contains("img_0000"), "{state}");
    let page = http(hub.addr(), "GET", "/", &[], b"").text();
    assert!(page.contains("<body data-images=\"on\">"), "{page}");
}

#[test]
fn names_out_of_the_directory_or_not_images_get_one_404_and_nothing_from_outside() {
    let (hub, images) = hub_with_images(|_| {});
    let dir = images.path();
    let outside = tempfile::tempdir().expect("another dir");
    let secret = jpeg(b"SECRET from outside the images dir");
    write(&outside.path().join("secret.jpg"), &secret);
    let outside_name = outside
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a temp dir name");
    let inside = jpeg(b"inside");
    write(&dir.join("camera-1/inside.jpg"), &inside);
    std::os::unix::fs::symlink(outside.path().join("secret.jpg"), dir.join("link-out.jpg"))
        .expect("a link out");
    std::os::unix::fs::symlink(outside.path(), dir.join("dir-out")).expect("a dir link out");
    std::os::unix::fs::symlink(dir.join("camera-1/inside.jpg"), dir.join("link-in.jpg"))
        .expect("a link in");
    write(&dir.join("notes.txt"), b"plain text");
    write(&dir.join("fake.jpg"), b"root:x:0:0:root:/root:/bin/sh");
    write(&dir.join("gone.jpg"), &jpeg(b"soon deleted"));
    std::fs::create_dir(dir.join("folder.jpg")).expect("a directory named like an image");

    // A link that stays inside is a name like any other.
    capture(&hub, 1, json!({"file_name": "link-in.jpg"}), &[]);
    let r = latest(hub.addr(), "/api/cameras/1/latest", &[]);
    assert_eq!((r.status, &r.body), (200, &inside));

    let secret_path = outside.path().join("secret.jpg");
    let refused: Vec<String> = vec![
        format!("../{outside_name}/secret.jpg"),
        "camera-1/../../secret.jpg".into(),
        secret_path.to_str().expect("UTF-8").into(),
        "/etc/passwd".into(),
        "link-out.jpg".into(),
        "dir-out/secret.jpg".into(),
        "notes.txt".into(),
        "fake.jpg".into(),
        "gone.jpg".into(),
        "folder.jpg".into(),
        "never-written.jpg".into(),
        "./camera-1/inside.jpg".into(),
    ];
    let want = json!({"error": "no image"});
    let mut bodies = Vec::new();
    for name in &refused {
        capture(&hub, 1, json!({"file_name": name}), &[]);
        if name == "gone.jpg" {
            // Deleted after its event: as if it never was.
            std::fs::remove_file(dir.join("gone.jpg")).expect("delete");
        }
        let r = latest(hub.addr(), "/api/cameras/1/latest", &[]);
        assert_eq!((r.status, r.json()), (404, want.clone()), "{name}");
        assert!(!r.body.windows(6).any(|w| w == b"SECRET"), "{name}");
        assert!(!r.text().contains("root:"), "{name}");
        bodies.push(r.body);
    }
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "one body for every refusal");

    // An unknown camera, a camera id that is no number, another host's: the same.
    for target in [
        "/api/cameras/99/latest",
        "/api/cameras/abc/latest",
        "/api/cameras/1/latest?host=garden",
    ] {
        let r = latest(hub.addr(), target, &[]);
        assert_eq!((r.status, r.json()), (404, want.clone()), "{target}");
    }
}

#[test]
fn an_image_over_8_mib_is_413() {
    let (hub, images) = hub_with_images(|_| {});
    let mut big = jpeg(b"");
    big.resize(8 * 1024 * 1024 + 1, 0);
    write(&images.path().join("big.jpg"), &big);
    let mut fits = jpeg(b"");
    fits.resize(8 * 1024 * 1024, 0);
    write(&images.path().join("fits.jpg"), &fits);
    capture(&hub, 1, json!({"file_name": "big.jpg"}), &[]);
    let r = latest(hub.addr(), "/api/cameras/1/latest", &[]);
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].is_string(), "{}", r.text());
    capture(&hub, 1, json!({"file_name": "fits.jpg"}), &[]);
    let r = latest(hub.addr(), "/api/cameras/1/latest", &[]);
    assert_eq!((r.status, r.body.len()), (200, fits.len()));
}

#[test]
fn another_hosts_camera_is_not_served_from_here() {
    let (hub, images) = hub_with_images(|_| {});
    write(&images.path().join("a.jpg"), &jpeg(b"a"));
    let conn = rusqlite::Connection::open(hub.db_path()).expect("open");
    conn.execute(
        "INSERT INTO sse_events \
         (event_type, event_data, priority, source, origin_host, origin_cursor) \
         VALUES ('image_captured', ?1, 'normal', 'camera-2', 'garden', '1-1')",
        [json!({"camera_id": 2, "file_name": "a.jpg"}).to_string()],
    )
    .expect("a remote event");
    let remote_seen = || {
        let state = http(hub.addr(), "GET", "/api/state", &[], b"").json();
        state["cameras"].as_array().is_some_and(|cams| {
            cams.iter()
                .any(|c| c["camera_id"] == 2 && c["host"] == "garden" && c["image_seq"].is_i64())
        })
    };
    assert!(wait_until(WAIT, remote_seen), "the remote camera folded");
    let r = latest(hub.addr(), "/api/cameras/2/latest", &[]);
    assert_eq!((r.status, r.json()), (404, json!({"error": "no image"})));
}

#[test]
fn without_images_dir_there_is_no_route_and_with_a_read_token_it_is_guarded() {
    let plain = TestHub::start();
    let r = latest(plain.addr(), "/api/cameras/1/latest", &[]);
    assert_eq!(r.status, 404);
    assert!(r.error().starts_with("no such path"), "{}", r.text());
    let page = http(plain.addr(), "GET", "/", &[], b"").text();
    assert!(!page.contains("data-images"), "{page}");

    let (hub, images) = hub_with_images(|c| c.read_token = Some("r34d".into()));
    let frame = jpeg(b"guarded");
    write(&images.path().join("a.jpg"), &frame);
    let auth = [("Authorization", "Bearer r34d")];
    capture(&hub, 1, json!({"file_name": "a.jpg"}), &auth);
    let r = latest(hub.addr(), "/api/cameras/1/latest", &[]);
    assert_eq!(r.status, 401);
    assert_ne!(r.body, frame);
    let r = latest(hub.addr(), "/api/cameras/1/latest", &auth);
    assert_eq!((r.status, &r.body), (200, &frame));
    let cookie = [("Cookie", "tle_read=r34d")];
    assert_eq!(
        latest(hub.addr(), "/api/cameras/1/latest", &cookie).status,
        200
    );
}

#[test]
fn a_missing_images_dir_is_created_and_a_file_in_its_place_is_a_start_error() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("a-file");
    write(&file, b"not a directory");
    let missing: PathBuf = tmp.path().join("missing/images");
    let hub = Hub::start(Config {
        bind: ([127, 0, 0, 1], 0).into(),
        db_path: tmp.path().join("made.db"),
        images_dir: Some(missing.clone()),
        ..Config::default()
    })
    .expect("a hub whose images directory does not exist yet starts");
    assert!(missing.is_dir(), "and made it");
    hub.shutdown().expect("shutdown");
    // A file where the directory should be, or under which it should be made.
    for dir in [&file, &file.join("images")] {
        let config = Config {
            bind: ([127, 0, 0, 1], 0).into(),
            db_path: tmp.path().join("events.db"),
            images_dir: Some(dir.clone()),
            ..Config::default()
        };
        let e = Hub::start(config).expect_err("refused");
        assert!(e.to_string().contains("images_dir"), "{e}");
        refused(&["--images-dir", dir.to_str().expect("UTF-8")], None);
    }
    // The same setting from the environment and from the config file.
    refused(&[], Some(&file));
    let toml = tmp.path().join("config.toml");
    let line = format!("images_dir = {:?}\n", file.to_str().expect("UTF-8"));
    write(&toml, line.as_bytes());
    refused(&["--config", toml.to_str().expect("UTF-8")], None);
}

/// `serve` with `extra` (and `TIMELAPSE_EVENTS_IMAGES_DIR=env`) exits 2, naming `images_dir`.
fn refused(extra: &[&str], env: Option<&Path>) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let db = tmp.path().join("cli.db");
    let mut cmd = std::process::Command::new(crate::support::bin());
    cmd.args([
        "serve",
        "--db",
        db.to_str().expect("UTF-8"),
        "--bind",
        "127.0.0.1:0",
    ])
    .args(extra);
    if let Some(dir) = env {
        cmd.env("TIMELAPSE_EVENTS_IMAGES_DIR", dir);
    }
    let out = cmd.output().expect("run the hub");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
    assert!(stderr.contains("images_dir"), "{stderr}");
}
