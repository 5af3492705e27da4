//! The live state the dashboard reads: one record per camera and per timelapse, folded from
//! events in stream order. Pure: no I/O. The poller owns the one [`State`], applies each
//! batch inside its dispatch transaction (store/state_rows.rs persists the changed records),
//! and publishes a fresh [`Snapshot`] when something changed.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{DEFAULT_MAX_CAMERAS, DEFAULT_MAX_EVENT_TYPES};
use crate::event::{Cursor, Event};

/// Event types the projection reads.
pub(crate) const IMAGE_CAPTURED: &str = "image_captured";
pub(crate) const CAMERA_STATUS_CHANGED: &str = "camera_status_changed";
pub(crate) const TIMELAPSE_STATUS_CHANGED: &str = "timelapse_status_changed";
/// Synthesised by the watchdog when a camera falls silent.
pub const CAMERA_STALE: &str = "camera_stale";
/// Synthesised by the watchdog when a stale camera reports again.
pub const CAMERA_RECOVERED: &str = "camera_recovered";
/// A camera's name (`{"camera_id": 1, "name": "Garden"}`); creates the camera if new.
pub const CAMERA_REGISTERED: &str = "camera_registered";
/// Emitted by `DELETE /api/cameras/<id>`: the camera leaves the state (a later event of it
/// brings it back). With `data.host`, another host's camera.
pub const CAMERA_FORGOTTEN: &str = "camera_forgotten";

/// Timelapses kept per camera of [`Limits::max_cameras`]: the current one and a few
/// before it (the least recently updated one goes first).
pub(crate) const TIMELAPSES_PER_CAMERA: usize = 4;

/// How much the projection (and the per-type counters beside it) holds at most, so that
/// neither memory nor `/api/state` grows with the number of distinct names a producer
/// sends (measured before: 20,000 camera ids made an 8 MB `/api/state` and +122 MiB RSS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Cameras beyond this many are not folded in (first come, first kept).
    pub max_cameras: usize,
    /// Timelapses beyond this many evict the least recently updated one.
    pub max_timelapses: usize,
    /// Event types beyond this many get no `event_type_counts` row of their own.
    pub max_event_types: usize,
}

impl Limits {
    /// The limits for `max_cameras` cameras and `max_event_types` types.
    pub(crate) fn new(max_cameras: usize, max_event_types: usize) -> Limits {
        Limits {
            max_cameras,
            max_timelapses: max_cameras.saturating_mul(TIMELAPSES_PER_CAMERA),
            max_event_types,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(DEFAULT_MAX_CAMERAS, DEFAULT_MAX_EVENT_TYPES)
    }
}

/// Events dispatched but not folded in, by reason: still stored and streamed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct NotFolded {
    /// About a camera beyond [`Limits::max_cameras`].
    pub camera_cap: u64,
    /// Of a type beyond [`Limits::max_event_types`] (not counted by type).
    pub event_type_cap: u64,
}

impl NotFolded {
    pub fn any(&self) -> bool {
        self.camera_cap > 0 || self.event_type_cap > 0
    }
}

/// Longest image name kept, in characters: a path, so longer than other text fields.
const MAX_IMAGE_NAME_CHARS: usize = 1024;

/// Weight of the newest gap in the learned capture interval (exponential moving average).
const INTERVAL_EWMA_WEIGHT: f64 = 0.3;

/// One camera, as the dashboard shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct CameraState {
    pub camera_id: i64,
    /// The camera host it belongs to: `None` for this hub's own (a camera of another host
    /// arrives through the fleet ingest; two hosts may both have camera 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// What its owner calls it (`name` on `camera_registered` or `camera_status_changed`).
    #[serde(default)]
    pub name: Option<String>,
    pub status: Option<String>,
    /// When `status` last took a different value (the first one included).
    #[serde(default)]
    pub status_since: Option<String>,
    pub health_status: Option<String>,
    pub last_capture_at: Option<String>,
    pub image_count: Option<i64>,
    pub day_number: Option<i64>,
    pub timelapse_id: Option<i64>,
    pub timelapse_status: Option<String>,
    pub stale: bool,
    /// When the watchdog flagged it stale; `None` when it is not.
    #[serde(default)]
    pub stale_since: Option<String>,
    /// Learned gap between captures, in milliseconds (the watchdog's yardstick).
    pub capture_interval_ms: Option<f64>,
    pub updated_at: String,
    /// The latest `image_captured`'s image (`thumbnail`, else `file_name`), as the event
    /// named it: persisted with the record, never in [`camera_json`] (a path on the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The seq of the event that named [`CameraState::image`]: the page's cache buster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_seq: Option<i64>,
}

/// One timelapse.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct TimelapseState {
    pub timelapse_id: i64,
    pub camera_id: i64,
    pub status: Option<String>,
    pub image_count: Option<i64>,
    pub day_number: Option<i64>,
    pub updated_at: String,
}

/// Everything the projection knows, plus the stream position it reflects.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct State {
    /// This host's cameras (the watchdog's, and the MQTT sink's).
    pub cameras: BTreeMap<i64, CameraState>,
    /// Other camera hosts' cameras, by (host, camera id): folded from their events like
    /// ours, judged stale by their own hosts; no timelapse records.
    pub remote: BTreeMap<(String, i64), CameraState>,
    pub timelapses: BTreeMap<i64, TimelapseState>,
    /// Seq of the last event that changed anything.
    pub seq: i64,
    /// What it may hold.
    pub limits: Limits,
}

/// What one event changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changed {
    pub camera: Option<i64>,
    /// Another host's camera.
    pub remote: Option<(String, i64)>,
    pub timelapse: Option<i64>,
    /// A timelapse dropped to make room (its record is to be deleted).
    pub evicted: Option<i64>,
    /// The event was about a camera beyond [`Limits::max_cameras`]: nothing changed.
    pub over_cap: bool,
    /// What a `camera_forgotten` removed (its rows are to be deleted).
    pub forgotten: Option<Forgotten>,
}

/// A camera removed by `camera_forgotten`, and the timelapse records that went with it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Forgotten {
    /// `None` for this host's camera.
    pub host: Option<String>,
    pub camera_id: i64,
    pub timelapses: Vec<i64>,
}

impl Changed {
    pub fn any(&self) -> bool {
        self.camera.is_some()
            || self.timelapse.is_some()
            || self.remote.is_some()
            || self.forgotten.is_some()
    }
}

fn int(data: &serde_json::Map<String, Value>, key: &str) -> Option<i64> {
    match data.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text(data: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    match data.get(key)? {
        Value::String(s) => Some(s.chars().take(64).collect()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// An `image_captured`'s image: its `thumbnail` if it has one, else its `file_name`; a
/// non-empty string, at most [`MAX_IMAGE_NAME_CHARS`] (a longer one is not a name the
/// route could serve: none, rather than a clipped one).
fn image_name(data: &serde_json::Map<String, Value>) -> Option<String> {
    ["thumbnail", "file_name"]
        .iter()
        .find_map(|key| match data.get(*key)? {
            Value::String(s) if !s.is_empty() && s.chars().count() <= MAX_IMAGE_NAME_CHARS => {
                Some(s.clone())
            }
            _ => None,
        })
}

/// Sets `status`, and `status_since` when it takes a different value.
fn set_status(cam: &mut CameraState, status: Option<String>, at: &str) {
    if status.is_some() && status != cam.status {
        cam.status_since = Some(at.to_owned());
    }
    cam.status = status;
}

fn unflag_stale(cam: &mut CameraState) {
    cam.stale = false;
    cam.stale_since = None;
}

/// Folds one event (of a type the projection reads) into its camera's record.
fn fold_camera(cam: &mut CameraState, e: &Event) {
    let d = &e.data;
    let at = e.created_at.clone();
    match e.event_type.as_str() {
        IMAGE_CAPTURED => {
            if let (Some(prev), Some(now)) = (
                cam.last_capture_at.as_deref().and_then(parse_utc_ms),
                parse_utc_ms(&at),
            ) {
                let gap = (now - prev) as f64;
                if gap > 0.0 {
                    cam.capture_interval_ms = Some(match cam.capture_interval_ms {
                        Some(avg) => avg + INTERVAL_EWMA_WEIGHT * (gap - avg),
                        None => gap,
                    });
                }
            }
            cam.last_capture_at = Some(at.clone());
            cam.image_count = int(d, "image_count").or(cam.image_count);
            cam.day_number = int(d, "day_number").or(cam.day_number);
            if let Some(t) = int(d, "timelapse_id") {
                if cam.timelapse_id != Some(t) {
                    cam.timelapse_status = None;
                }
                cam.timelapse_id = Some(t);
            }
            if cam.status.is_none() {
                set_status(cam, Some("online".into()), &at);
            }
            if let Some(name) = image_name(d) {
                cam.image = Some(name);
                cam.image_seq = Some(e.cursor.seq);
            }
        }
        CAMERA_STATUS_CHANGED => {
            let status = text(d, "status").or(cam.status.clone());
            set_status(cam, status, &at);
            cam.health_status = text(d, "health_status").or(cam.health_status.take());
            cam.name = text(d, "name").or(cam.name.take());
            // An offline camera is not judged stale (the README's promise).
            if cam.status.as_deref() == Some("offline") {
                unflag_stale(cam);
            }
        }
        TIMELAPSE_STATUS_CHANGED => {
            if let Some(t) = int(d, "timelapse_id") {
                cam.timelapse_id = Some(t);
            }
            cam.timelapse_status = text(d, "status").or(cam.timelapse_status.take());
            // Nor is one whose timelapse is paused or completed.
            if cam
                .timelapse_status
                .as_deref()
                .is_some_and(|s| s != "running")
            {
                unflag_stale(cam);
            }
        }
        CAMERA_REGISTERED => cam.name = text(d, "name").or(cam.name.take()),
        CAMERA_STALE => {
            if !cam.stale {
                cam.stale_since = Some(at.clone());
            }
            cam.stale = true;
        }
        CAMERA_RECOVERED => unflag_stale(cam),
        _ => {}
    }
    cam.updated_at = at;
}

impl State {
    /// Folds one event in; returns what changed (nothing for types it does not read,
    /// events without a camera_id, or a camera beyond [`Limits::max_cameras`], which counts
    /// every host's cameras).
    pub fn apply(&mut self, e: &Event) -> Changed {
        let mut changed = Changed::default();
        let Some(camera_id) = e.camera_id() else {
            return changed;
        };
        let relevant = matches!(
            e.event_type.as_str(),
            IMAGE_CAPTURED
                | CAMERA_STATUS_CHANGED
                | TIMELAPSE_STATUS_CHANGED
                | CAMERA_STALE
                | CAMERA_RECOVERED
                | CAMERA_REGISTERED
                | CAMERA_FORGOTTEN
        );
        if !relevant {
            return changed;
        }
        if e.event_type == CAMERA_FORGOTTEN {
            return self.forget(e, camera_id);
        }
        let full = self.cameras.len() + self.remote.len() >= self.limits.max_cameras;
        if let Some(host) = &e.host {
            let key = (host.clone(), camera_id);
            if full && !self.remote.contains_key(&key) {
                changed.over_cap = true;
                return changed;
            }
            let cam = self
                .remote
                .entry(key.clone())
                .or_insert_with(|| CameraState {
                    camera_id,
                    host: Some(host.clone()),
                    ..CameraState::default()
                });
            fold_camera(cam, e);
            changed.remote = Some(key);
            self.seq = e.cursor.seq;
            return changed;
        }
        if full && !self.cameras.contains_key(&camera_id) {
            changed.over_cap = true;
            return changed;
        }
        let cam = self
            .cameras
            .entry(camera_id)
            .or_insert_with(|| CameraState {
                camera_id,
                ..CameraState::default()
            });
        fold_camera(cam, e);
        changed.camera = Some(camera_id);
        let d = &e.data;
        let at = e.created_at.clone();
        let timelapse_id = match e.event_type.as_str() {
            IMAGE_CAPTURED | TIMELAPSE_STATUS_CHANGED => int(d, "timelapse_id"),
            _ => None,
        };
        if let Some(tid) = timelapse_id {
            if !self.timelapses.contains_key(&tid)
                && self.timelapses.len() >= self.limits.max_timelapses
            {
                changed.evicted = self.evict_timelapse();
            }
            let tl = self
                .timelapses
                .entry(tid)
                .or_insert_with(|| TimelapseState {
                    timelapse_id: tid,
                    camera_id,
                    ..TimelapseState::default()
                });
            tl.camera_id = camera_id;
            if e.event_type == IMAGE_CAPTURED {
                tl.image_count = int(d, "image_count").or(tl.image_count);
                tl.day_number = int(d, "day_number").or(tl.day_number);
                if tl.status.is_none() {
                    tl.status = Some("running".into());
                }
            } else {
                tl.status = text(d, "status").or(tl.status.take());
            }
            tl.updated_at = at;
            changed.timelapse = Some(tid);
        }
        self.seq = e.cursor.seq;
        changed
    }

    /// Folds a `camera_forgotten`: a remote event, or a local one naming `data.host`, removes
    /// that host's camera; a local one without removes ours and its timelapse records. A
    /// remote one naming `data.host` (its hub forgot a third host's camera) changes nothing.
    fn forget(&mut self, e: &Event, camera_id: i64) -> Changed {
        let mut changed = Changed::default();
        let named = text(&e.data, "host");
        // Another host's hub forgetting a camera of a third host changed its own view only:
        // here that would remove the wrong camera (its host's camera of the same id).
        if e.host.is_some() && named.is_some() {
            return changed;
        }
        let host = e.host.clone().or(named);
        let gone = match &host {
            Some(h) => self.remote.remove(&(h.clone(), camera_id)).is_some(),
            None => self.cameras.remove(&camera_id).is_some(),
        };
        if !gone {
            return changed;
        }
        let mut timelapses = Vec::new();
        if host.is_none() {
            self.timelapses.retain(|id, t| {
                let keep = t.camera_id != camera_id;
                if !keep {
                    timelapses.push(*id);
                }
                keep
            });
        }
        changed.forgotten = Some(Forgotten {
            host,
            camera_id,
            timelapses,
        });
        self.seq = e.cursor.seq;
        changed
    }

    /// Drops the least recently updated timelapse (the lowest id among equals, so that
    /// folding stays deterministic); returns its id.
    fn evict_timelapse(&mut self) -> Option<i64> {
        let oldest = self
            .timelapses
            .values()
            .min_by(|a, b| (&a.updated_at, a.timelapse_id).cmp(&(&b.updated_at, b.timelapse_id)))
            .map(|t| t.timelapse_id)?;
        self.timelapses.remove(&oldest);
        Some(oldest)
    }

    /// The `/api/state` document at `cursor`.
    pub fn to_json(&self, cursor: Cursor) -> Value {
        let cameras: Vec<Value> = self
            .cameras
            .values()
            .chain(self.remote.values())
            .map(camera_json)
            .collect();
        let timelapses: Vec<&TimelapseState> = self.timelapses.values().collect();
        json!({"cursor": cursor.to_string(), "cameras": cameras, "timelapses": timelapses})
    }
}

/// One camera as `/api/state` shows it (and the MQTT sink's retained state topic).
pub(crate) fn camera_json(c: &CameraState) -> Value {
    let mut v = json!({
        "camera_id": c.camera_id,
        "name": c.name,
        "status": c.status,
        "status_since": c.status_since,
        "health_status": c.health_status,
        "last_capture_at": c.last_capture_at,
        "image_count": c.image_count,
        "day_number": c.day_number,
        "timelapse_id": c.timelapse_id,
        "timelapse_status": c.timelapse_status,
        "stale": c.stale,
        "stale_since": c.stale_since,
        "expected_interval_secs": c.capture_interval_ms.map(|ms| (ms / 10.0).round() / 100.0),
        "updated_at": c.updated_at,
        "image_seq": c.image_seq,
    });
    // Another host's camera says whose it is; this host's look as they always did.
    if let (Some(host), Value::Object(m)) = (&c.host, &mut v) {
        m.insert("host".into(), Value::String(host.clone()));
    }
    v
}

/// The encoded state as served: body, ETag and the cursor it reflects.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub body: String,
    pub etag: String,
    pub cursor: Cursor,
    /// This host's cameras' latest images, by camera id: (name, seq), for the image route
    /// (kept out of `body`, which is public).
    pub images: BTreeMap<i64, (String, i64)>,
}

/// The current [`Snapshot`], swapped by the poller when state changes; readers clone an Arc.
#[derive(Default)]
pub(crate) struct StateCache {
    current: RwLock<Option<Arc<Snapshot>>>,
}

impl StateCache {
    /// Encodes `state` once; every reader then shares the bytes.
    pub fn publish(&self, state: &State, log_id: u32, version: u64) {
        let cursor = Cursor {
            log_id,
            seq: state.seq,
        };
        let snap = Snapshot {
            body: state.to_json(cursor).to_string(),
            etag: format!("\"{log_id:08x}-{version}-{}\"", state.seq),
            cursor,
            images: state
                .cameras
                .iter()
                .filter_map(|(id, c)| Some((*id, (c.image.clone()?, c.image_seq?))))
                .collect(),
        };
        // The lock guards one Option swap; a poisoned one still holds a whole value.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(snap));
    }

    pub fn get(&self) -> Option<Arc<Snapshot>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// An RFC 3339 UTC timestamp, `YYYY-MM-DDTHH:MM:SS[.fff]Z` as SQLite's strftime writes it,
/// to Unix milliseconds. The `T` is required (jiff also takes a space there).
pub(crate) fn parse_utc_ms(s: &str) -> Option<i64> {
    if s.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(jiff::Timestamp::as_millisecond)
}

/// Now as Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_hosts_camera_1_is_not_ours() {
        let mut state = State::default();
        let mut theirs = Event::for_test(
            1,
            IMAGE_CAPTURED,
            "2026-12-01T10:00:00.000Z",
            json!({"camera_id": 1, "image_count": 9}),
        );
        theirs.host = Some("garden".into());
        let ours = Event::for_test(
            2,
            IMAGE_CAPTURED,
            "2026-12-01T10:00:01.000Z",
            json!({"camera_id": 1, "image_count": 3, "timelapse_id": 5}),
        );
        let c = state.apply(&theirs);
        assert_eq!(
            (c.camera, c.remote.clone()),
            (None, Some(("garden".into(), 1)))
        );
        state.apply(&ours);
        assert_eq!(state.cameras[&1].image_count, Some(3));
        assert_eq!(state.remote[&("garden".to_owned(), 1)].image_count, Some(9));
        assert_eq!(state.timelapses.len(), 1, "only ours has timelapse records");
        let doc = state.to_json(Cursor { log_id: 1, seq: 2 });
        let cams = doc["cameras"].as_array().cloned().unwrap_or_default();
        assert_eq!(cams.len(), 2);
        assert!(
            cams[0].get("host").is_none(),
            "ours has no host field: {}",
            cams[0]
        );
        assert_eq!(cams[1]["host"], "garden");
        // The cap counts every host's cameras.
        let mut small = State {
            limits: Limits::new(1, 8),
            ..State::default()
        };
        small.apply(&theirs);
        assert!(small.apply(&ours).over_cap);
    }

    #[test]
    fn a_capture_names_its_image_and_the_page_sees_only_its_seq() {
        let mut s = State::default();
        let at = "2026-11-26T10:00:00.000Z";
        s.apply(&ev(
            1,
            IMAGE_CAPTURED,
            at,
            json!({"camera_id": 1, "file_name": "camera-1/a.jpg"}),
        ));
        assert_eq!(s.cameras[&1].image.as_deref(), Some("camera-1/a.jpg"));
        s.apply(&ev(
            2,
            IMAGE_CAPTURED,
            at,
            json!({"camera_id": 1, "file_name": "camera-1/b.jpg", "thumbnail": "thumbs/b.jpg"}),
        ));
        let c = &s.cameras[&1];
        assert_eq!(
            (c.image.as_deref(), c.image_seq),
            (Some("thumbs/b.jpg"), Some(2))
        );
        // No name, a number or an absurd one: the last image stays.
        for (seq, data) in [
            (3, json!({"camera_id": 1})),
            (4, json!({"camera_id": 1, "file_name": 7})),
            (5, json!({"camera_id": 1, "file_name": "x".repeat(1025)})),
            (6, json!({"camera_id": 1, "file_name": ""})),
        ] {
            s.apply(&ev(seq, IMAGE_CAPTURED, at, data));
        }
        let c = &s.cameras[&1];
        assert_eq!(
            (c.image.as_deref(), c.image_seq),
            (Some("thumbs/b.jpg"), Some(2))
        );
        let v = camera_json(c);
        assert_eq!(v["image_seq"], 2);
        assert!(!v.to_string().contains("thumbs"), "no path in {v}");
        let fresh = camera_json(&CameraState::default());
        assert!(fresh["image_seq"].is_null(), "{fresh}");
        // Persisted with the record, and read back from one written before the field.
        let text = serde_json::to_string(c).expect("a record");
        let back: CameraState = serde_json::from_str(&text).expect("read back");
        assert_eq!(&back, c);
        let old: CameraState = serde_json::from_str(r#"{"camera_id":1,"status":null,"health_status":null,"last_capture_at":null,"image_count":null,"day_number":null,"timelapse_id":null,"timelapse_status":null,"stale":false,"capture_interval_ms":null,"updated_at":""}"#).expect("an old record");
        assert_eq!((old.image, old.image_seq), (None, None));
        let cache = StateCache::default();
        cache.publish(&s, 1, 1);
        let snap = cache.get().expect("published");
        assert_eq!(snap.images[&1], ("thumbs/b.jpg".to_owned(), 2));
        assert!(!snap.body.contains("thumbs"), "{}", snap.body);
    }

    fn ev(seq: i64, t: &str, at: &str, data: Value) -> Event {
        Event::for_test(seq, t, at, data)
    }

    #[test]
    fn timestamps_parse_to_unix_ms() {
        assert_eq!(parse_utc_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_utc_ms("2026-11-26T10:00:00.123Z"),
            Some(1_795_687_200_123)
        );
        assert_eq!(parse_utc_ms("2000-02-29T23:59:59Z"), Some(951_868_799_000));
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "yesterday",
            "2026-11-26 10:00:00.000Z",
        ] {
            assert_eq!(parse_utc_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_camera_day_folds_field_by_field() {
        let mut s = State::default();
        let t0 = "2026-11-26T10:00:00.000Z";
        s.apply(&ev(
            1,
            TIMELAPSE_STATUS_CHANGED,
            t0,
            json!({"camera_id": 2, "timelapse_id": 9, "status": "running"}),
        ));
        s.apply(&ev(
            2,
            IMAGE_CAPTURED,
            "2026-11-26T10:00:10.000Z",
            json!({"camera_id": 2, "timelapse_id": 9, "image_count": 1, "day_number": 1}),
        ));
        s.apply(&ev(
            3,
            IMAGE_CAPTURED,
            "2026-11-26T10:00:20.000Z",
            json!({"camera_id": 2, "timelapse_id": 9, "image_count": 2, "day_number": 1}),
        ));
        let c = &s.cameras[&2];
        assert_eq!(
            (c.image_count, c.day_number, c.timelapse_id),
            (Some(2), Some(1), Some(9))
        );
        assert_eq!(c.timelapse_status.as_deref(), Some("running"));
        assert_eq!(
            c.last_capture_at.as_deref(),
            Some("2026-11-26T10:00:20.000Z")
        );
        assert_eq!(c.capture_interval_ms, Some(10_000.0));
        s.apply(&ev(
            4,
            CAMERA_STATUS_CHANGED,
            "2026-11-26T10:01:00.000Z",
            json!({"camera_id": 2, "status": "offline", "health_status": "unreachable"}),
        ));
        s.apply(&ev(
            5,
            CAMERA_STALE,
            "2026-11-26T10:01:01.000Z",
            json!({"camera_id": 2}),
        ));
        assert!(s.cameras[&2].stale);
        assert_eq!(s.cameras[&2].status.as_deref(), Some("offline"));
        s.apply(&ev(
            6,
            CAMERA_RECOVERED,
            "2026-11-26T10:02:00.000Z",
            json!({"camera_id": 2}),
        ));
        s.apply(&ev(
            7,
            TIMELAPSE_STATUS_CHANGED,
            "2026-11-26T10:03:00.000Z",
            json!({"camera_id": 2, "timelapse_id": 9, "status": "completed"}),
        ));
        assert!(!s.cameras[&2].stale);
        assert_eq!(s.timelapses[&9].status.as_deref(), Some("completed"));
        assert_eq!(s.timelapses[&9].image_count, Some(2));
        assert_eq!(s.seq, 7);
    }

    #[test]
    fn going_offline_or_pausing_clears_stale_without_an_event() {
        for (seq, t, data) in [
            (
                3,
                CAMERA_STATUS_CHANGED,
                json!({"camera_id": 1, "status": "offline"}),
            ),
            (
                3,
                TIMELAPSE_STATUS_CHANGED,
                json!({"camera_id": 1, "timelapse_id": 4, "status": "paused"}),
            ),
            (
                3,
                TIMELAPSE_STATUS_CHANGED,
                json!({"camera_id": 1, "timelapse_id": 4, "status": "completed"}),
            ),
        ] {
            let mut s = State::default();
            s.apply(&capture(1, 1, 4));
            s.apply(&ev(
                2,
                CAMERA_STALE,
                "2026-11-26T11:00:00.000Z",
                json!({"camera_id": 1}),
            ));
            assert_eq!(
                (s.cameras[&1].stale, s.cameras[&1].stale_since.as_deref()),
                (true, Some("2026-11-26T11:00:00.000Z"))
            );
            let c = s.apply(&ev(seq, t, "2026-11-26T11:05:00.000Z", data.clone()));
            assert_eq!(c.camera, Some(1));
            let cam = &s.cameras[&1];
            assert_eq!(
                (cam.stale, cam.stale_since.clone()),
                (false, None),
                "{data}"
            );
        }
        // Another host's camera folds the same way.
        let mut s = State::default();
        for (seq, t, data) in [
            (1, CAMERA_STALE, json!({"camera_id": 2})),
            (
                2,
                CAMERA_STATUS_CHANGED,
                json!({"camera_id": 2, "status": "offline"}),
            ),
        ] {
            let mut e = ev(seq, t, "2026-11-26T11:00:00.000Z", data);
            e.host = Some("garden".into());
            s.apply(&e);
        }
        assert!(!s.remote[&("garden".to_owned(), 2)].stale);
        // Running again: a still-online camera's stale flag stays until it recovers.
        let mut s = State::default();
        s.apply(&ev(
            1,
            CAMERA_STALE,
            "2026-11-26T11:00:00.000Z",
            json!({"camera_id": 1}),
        ));
        s.apply(&ev(
            2,
            TIMELAPSE_STATUS_CHANGED,
            "2026-11-26T11:00:01.000Z",
            json!({"camera_id": 1, "timelapse_id": 4, "status": "running"}),
        ));
        assert!(s.cameras[&1].stale);
    }

    #[test]
    fn names_and_since_times_fold_and_serialise() {
        let mut s = State::default();
        let c = s.apply(&ev(
            1,
            CAMERA_REGISTERED,
            "2026-11-26T09:00:00.000Z",
            json!({"camera_id": 3, "name": "Garden"}),
        ));
        assert_eq!(c.camera, Some(3), "registering creates the camera");
        assert_eq!(s.cameras[&3].status_since, None);
        s.apply(&capture(2, 3, 1)); // sets "online" for a camera with no status
        assert_eq!(s.cameras[&3].status.as_deref(), Some("online"));
        assert_eq!(
            s.cameras[&3].status_since.as_deref(),
            Some("2026-11-26T10:00:02.000Z")
        );
        s.apply(&ev(
            3,
            CAMERA_STATUS_CHANGED,
            "2026-11-26T10:30:00.000Z",
            json!({"camera_id": 3, "status": "online", "health_status": "ok"}),
        ));
        assert_eq!(
            s.cameras[&3].status_since.as_deref(),
            Some("2026-11-26T10:00:02.000Z"),
            "the same status again is no change"
        );
        let long: String = "x".repeat(100);
        s.apply(&ev(
            4,
            CAMERA_STATUS_CHANGED,
            "2026-11-26T11:00:00.000Z",
            json!({"camera_id": 3, "status": "offline", "name": long}),
        ));
        let cam = &s.cameras[&3];
        assert_eq!(
            cam.status_since.as_deref(),
            Some("2026-11-26T11:00:00.000Z")
        );
        assert_eq!(cam.name.as_deref().map(str::len), Some(64));
        let v = camera_json(cam);
        assert_eq!(v["name"], "x".repeat(64));
        assert_eq!(v["status_since"], "2026-11-26T11:00:00.000Z");
        assert_eq!(v["stale_since"], Value::Null);
        let unnamed = camera_json(&CameraState::default());
        assert_eq!(
            (&unnamed["name"], &unnamed["status_since"]),
            (&Value::Null, &Value::Null)
        );
        // A record persisted before these fields existed still loads.
        let old: CameraState = serde_json::from_str(
            r#"{"camera_id":1,"status":null,"health_status":null,"last_capture_at":null,
                "image_count":null,"day_number":null,"timelapse_id":null,
                "timelapse_status":null,"stale":false,"capture_interval_ms":null,
                "updated_at":""}"#,
        )
        .unwrap_or_default();
        assert_eq!(old.camera_id, 1);
    }

    #[test]
    fn forgetting_a_camera_removes_it_and_its_timelapses_until_it_reports_again() {
        let mut s = State::default();
        s.apply(&capture(1, 1, 10));
        s.apply(&capture(2, 2, 20));
        let mut theirs = capture(3, 1, 30);
        theirs.host = Some("garden".into());
        s.apply(&theirs);
        let forget = |seq, data| ev(seq, CAMERA_FORGOTTEN, "2026-11-26T12:00:00.000Z", data);
        let c = s.apply(&forget(4, json!({"camera_id": 1})));
        assert_eq!(
            c.forgotten,
            Some(Forgotten {
                host: None,
                camera_id: 1,
                timelapses: vec![10],
            })
        );
        assert!(c.any());
        assert_eq!(s.cameras.keys().copied().collect::<Vec<_>>(), [2]);
        assert_eq!(s.timelapses.keys().copied().collect::<Vec<_>>(), [20]);
        assert_eq!(s.remote.len(), 1, "garden's camera 1 is another camera");
        assert!(
            !s.apply(&forget(5, json!({"camera_id": 1}))).any(),
            "gone already"
        );
        let c = s.apply(&forget(6, json!({"camera_id": 1, "host": "garden"})));
        assert_eq!(c.forgotten.map(|f| f.host), Some(Some("garden".into())));
        assert!(s.remote.is_empty());
        // A remote host's own forget removes its camera.
        s.apply(&theirs);
        let mut remote_forget = forget(7, json!({"camera_id": 1}));
        remote_forget.host = Some("garden".into());
        let mut relayed = forget(7, json!({"camera_id": 1, "host": "window"}));
        relayed.host = Some("garden".into());
        assert!(
            !s.apply(&relayed).any(),
            "garden forgot window's camera, not its own"
        );
        assert!(s.apply(&remote_forget).forgotten.is_some());
        assert!(s.remote.is_empty() && s.cameras.contains_key(&2));
        // A later event brings it back.
        s.apply(&capture(8, 1, 10));
        assert!(s.cameras.contains_key(&1));
    }

    #[test]
    fn unrelated_events_change_nothing() {
        let mut s = State::default();
        assert!(
            !s.apply(&ev(
                1,
                "door_opened",
                "2026-11-26T10:00:00.000Z",
                json!({"camera_id": 1})
            ))
            .any()
        );
        assert!(
            !s.apply(&ev(
                2,
                IMAGE_CAPTURED,
                "2026-11-26T10:00:00.000Z",
                json!({"no_camera": 1})
            ))
            .any()
        );
        assert_eq!(s, State::default());
    }

    fn capture(seq: i64, camera: i64, timelapse: i64) -> Event {
        let at = format!("2026-11-26T10:00:{:02}.000Z", seq % 60);
        ev(
            seq,
            IMAGE_CAPTURED,
            &at,
            json!({"camera_id": camera, "timelapse_id": timelapse, "image_count": seq}),
        )
    }

    #[test]
    fn cameras_beyond_the_cap_are_not_folded_and_known_ones_still_are() {
        let mut s = State {
            limits: Limits::new(2, 8),
            ..State::default()
        };
        assert!(s.apply(&capture(1, 10, 100)).any());
        assert!(s.apply(&capture(2, 11, 110)).any());
        let over = s.apply(&capture(3, 12, 120));
        assert_eq!(
            over,
            Changed {
                over_cap: true,
                ..Changed::default()
            }
        );
        assert_eq!(s.cameras.keys().copied().collect::<Vec<_>>(), [10, 11]);
        assert_eq!(s.seq, 2, "an unfolded event does not move the state's seq");
        let known = s.apply(&capture(4, 10, 100));
        assert_eq!((known.camera, known.over_cap), (Some(10), false));
        assert_eq!(s.cameras[&10].image_count, Some(4));
        assert!(!s.timelapses.contains_key(&120));
    }

    #[test]
    fn timelapses_beyond_the_cap_evict_the_least_recently_updated() {
        let mut s = State {
            limits: Limits::new(1, 8),
            ..State::default()
        };
        assert_eq!(s.limits.max_timelapses, TIMELAPSES_PER_CAMERA);
        for (seq, t) in (1..).zip(1..=4) {
            s.apply(&capture(seq, 1, t));
        }
        s.apply(&capture(5, 1, 1)); // 1 is now the most recent; 2 is the oldest
        let c = s.apply(&capture(6, 1, 5));
        assert_eq!((c.timelapse, c.evicted), (Some(5), Some(2)));
        assert_eq!(
            s.timelapses.keys().copied().collect::<Vec<_>>(),
            [1, 3, 4, 5]
        );
    }

    #[test]
    fn folding_with_caps_is_deterministic() {
        let events: Vec<Event> = (1..=500).map(|i| capture(i, i % 37, i % 101)).collect();
        let fold = || {
            let mut s = State {
                limits: Limits::new(8, 8),
                ..State::default()
            };
            let refused = events.iter().filter(|e| s.apply(e).over_cap).count();
            (s, refused)
        };
        let (a, refused) = fold();
        assert_eq!(fold(), (a.clone(), refused));
        assert_eq!(a.cameras.len(), 8);
        assert_eq!(a.timelapses.len(), 32);
        // Cameras 1..=8 came first; every event about the other 29 was refused.
        assert_eq!(
            a.cameras.keys().copied().collect::<Vec<_>>(),
            (1..=8).collect::<Vec<_>>()
        );
        assert_eq!(
            refused,
            events
                .iter()
                .filter(|e| !(1..=8).contains(&e.camera_id().unwrap_or(0)))
                .count()
        );
    }
}
