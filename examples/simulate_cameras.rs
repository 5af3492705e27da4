//! Simulated timelapse cameras: a separate process producing a realistic event stream into
//! a hub, so the dashboard and `tail` have something to show without cameras on the desk.
//!
//! Each camera is one capture thread, numbered 1..=N (`camera_id`). Its life: it comes
//! online, starts a timelapse, captures images (`image_captured` with a growing
//! `image_count`, a `day_number`, an `image_id` and a `file_name`), now and then drops
//! offline and comes back (`camera_status_changed`, high priority), pauses and resumes its
//! timelapse, completes it after a few hundred images and starts the next one.
//!
//! By default it writes into the hub's database file through [`Emitter::open`]: exactly how a
//! capture program on the camera host produces events (the hub need not even be running;
//! it dispatches what is pending when it starts). With `--url` it POSTs to
//! `/api/events` instead (through ureq), as a camera on another board would.
//!
//! ```text
//! cargo run --release --example simulate_cameras                       # ./timelapse-events.db
//! cargo run --release --example simulate_cameras -- --cameras 8 --interval-ms 200
//! cargo run --release --example simulate_cameras -- --url http://pi.local:8080 --token s3cret
//! ```
//!
//! With `--images-dir DIR` each capture is also a real file: a small (320×180) JPEG at
//! `DIR/<file_name>` (the event's `file_name`, e.g.
//! `camera-1/timelapse-1001/day-001/image-000042.jpg`, relative to DIR), written before its
//! event, showing a sky whose colour follows the simulated time of day, the sun crossing it,
//! and the camera's number and the image count, so a hub started with the same
//! `--images-dir` shows pictures on its dashboard. Only the last 50 frames of each camera
//! stay on disk (older ones are deleted), so a long run does not fill an SD card.
//!
//! ```text
//! cargo run --release --example simulate_cameras -- --images-dir /tmp/tle-images
//! ```
//!
//! One line per event goes to stdout (`<id> camera-<n> <type> <data>`); the seed and a summary
//! go to stderr, so `--seed` reproduces a run camera by camera.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/http_url.rs"]
mod http_url;
#[allow(dead_code)] // no connection to `watch`
#[path = "common/stop.rs"]
mod stop;

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use timelapse_events::{DEFAULT_DB_PATH, Emitter, NewEvent};

use cli::BoxError;
use stop::Stop;

/// Simulated timelapse cameras producing events for a timelapse-events hub.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Args {
    /// The hub's SQLite database file (created if missing).
    #[arg(long, default_value = DEFAULT_DB_PATH)]
    db: PathBuf,
    /// How many cameras (capture threads), numbered 1..=N.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    cameras: u32,
    /// Time between two steps of one camera, in milliseconds (each step is at most one event).
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Seed for a reproducible run (every camera's life follows from it). Random if absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many events in total and exit 0. Runs until Ctrl-C if absent.
    #[arg(long)]
    events: Option<u64>,
    /// POST to this hub instead of writing into --db, e.g. http://127.0.0.1:8080 (the path
    /// defaults to /api/events).
    #[arg(long)]
    url: Option<String>,
    /// Bearer token for --url (the hub's --token).
    #[arg(long, requires = "url")]
    token: Option<String>,
    /// Write each capture as a small JPEG at DIR/<file_name> (created if missing; the last
    /// 50 frames of each camera are kept). No files without it.
    #[arg(long)]
    images_dir: Option<PathBuf>,
}

/// Frames kept on disk per camera with `--images-dir`; older ones are deleted.
const KEEP_FRAMES: usize = 50;
/// The frames' size: a thumbnail, a few KiB as JPEG.
const FRAME_WIDTH: usize = 320;
const FRAME_HEIGHT: usize = 180;

fn main() -> ExitCode {
    let args = Args::parse(); // exits 2 with a usage message on bad flags
    cli::exit(run(args).map_err(|e| chain(&*e).into()))
}

fn run(args: Args) -> Result<(), BoxError> {
    let sink =
        match &args.url {
            Some(url) => Sink::Http(Poster::new(url, args.token.clone())?),
            None => Sink::Db(Emitter::open(&args.db).map_err(|e| {
                format!("cannot open database {}: {}", args.db.display(), e.chain())
            })?),
        };
    if let Some(dir) = &args.images_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create --images-dir {}: {e}", dir.display()))?;
    }
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    eprintln!(
        "simulating {} camera(s) into {}, one step every {} ms, seed {seed} (Ctrl-C stops)",
        args.cameras,
        args.url
            .clone()
            .unwrap_or_else(|| args.db.display().to_string()),
        args.interval_ms
    );

    let stop = Arc::new(Stop::new());
    let on_signal = stop.clone();
    ctrlc::set_handler(move || on_signal.trigger())
        .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))?;

    let shared = Arc::new(Shared {
        sink,
        stop: stop.clone(),
        budget: AtomicU64::new(args.events.unwrap_or(u64::MAX)),
        produced: AtomicU64::new(0),
        interval: Duration::from_millis(args.interval_ms),
        images_dir: args.images_dir.clone(),
        failure: Mutex::new(None),
    });
    let mut threads = Vec::new();
    for camera_id in 1..=args.cameras {
        let camera_shared = shared.clone();
        let rng = fastrand::Rng::with_seed(
            seed ^ u64::from(camera_id).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let spawned = thread::Builder::new()
            .name(format!("camera-{camera_id}"))
            .spawn(move || Camera::new(i64::from(camera_id), rng).run(&camera_shared));
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                stop.trigger();
                shared.fail(format!("cannot start camera {camera_id}: {e}").into());
                break;
            }
        }
    }
    for handle in threads {
        if handle.join().is_err() {
            shared.fail("a camera thread panicked".into());
        }
    }
    let produced = shared.produced.load(Ordering::Relaxed);
    eprintln!("produced {produced} event(s) (seed {seed})");
    match shared
        .failure
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What every camera thread shares.
struct Shared {
    sink: Sink,
    stop: Arc<Stop>,
    /// Events still allowed (`--events`); each camera takes one before it produces.
    budget: AtomicU64,
    produced: AtomicU64,
    interval: Duration,
    /// `--images-dir`: where captures are written as JPEG files.
    images_dir: Option<PathBuf>,
    /// The first fatal error; it stops every camera.
    failure: Mutex<Option<BoxError>>,
}

impl Shared {
    fn fail(&self, e: BoxError) {
        // An Option written in one assignment: poisoning cannot leave it half-written.
        let mut slot = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(e);
        self.stop.trigger();
    }

    /// Produces one event, retrying a transient failure (the hub restarting, a busy
    /// database) until it goes through or the run stops. False when the run is over.
    fn produce(&self, event: NewEvent) -> bool {
        let taken = self
            .budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if taken.is_err() {
            self.stop.trigger(); // --events reached: every camera ends
            return false;
        }
        let mut delay = Duration::from_millis(250);
        loop {
            match self.sink.send(&event) {
                Ok(id) => {
                    self.produced.fetch_add(1, Ordering::Relaxed);
                    let line = format!(
                        "{id} {} {} {}\n",
                        event.source, event.event_type, event.data
                    );
                    // stdout gone (e.g. piped into `head`): nobody is watching, so stop.
                    if std::io::stdout().lock().write_all(line.as_bytes()).is_err() {
                        self.stop.trigger();
                        return false;
                    }
                    return true;
                }
                Err(Failure::Fatal(e)) => {
                    self.fail(format!("{} ({}): {}", event.source, event.event_type, e).into());
                    return false;
                }
                Err(Failure::Transient(e)) => {
                    eprintln!(
                        "{}: cannot send {} ({e}); retrying in {delay:?}",
                        event.source, event.event_type
                    );
                    if self.stop.sleep(delay) {
                        return false;
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Where events go: the database file, or the hub's HTTP API.
enum Sink {
    Db(Emitter),
    Http(Poster),
}

enum Failure {
    /// Worth retrying: the hub or the database may be back in a moment.
    Transient(String),
    /// Retrying cannot help (a refused event, a wrong token): stop the run.
    Fatal(String),
}

impl Sink {
    fn send(&self, event: &NewEvent) -> Result<i64, Failure> {
        match self {
            Sink::Db(emitter) => match emitter.emit(event.clone()) {
                Ok(id) => Ok(id.0),
                Err(e) if e.is_busy() || e.is_disk_full() => Err(Failure::Transient(e.chain())),
                Err(e) => Err(Failure::Fatal(e.chain())),
            },
            Sink::Http(poster) => poster.post(event),
        }
    }
}

/// One camera's state; its thread runs [`Camera::run`].
struct Camera {
    id: i64,
    rng: fastrand::Rng,
    /// Increases with every timelapse this camera starts.
    timelapse_seq: i64,
    timelapse_id: i64,
    image_count: i64,
    /// Images captured by this camera over all its timelapses (makes `image_id` unique).
    captured: i64,
    /// Images per simulated day: the timelapse's capture interval.
    images_per_day: i64,
    /// The image count at which the current timelapse completes.
    target_images: i64,
    /// The frames written with `--images-dir`, oldest first (at most [`KEEP_FRAMES`]).
    written: VecDeque<PathBuf>,
}

/// What a camera is doing between two steps.
enum Phase {
    /// Camera online, timelapse running: capturing.
    Capturing,
    /// Offline for this many more steps.
    Offline(u32),
    /// Timelapse paused for this many more steps.
    Paused(u32),
}

impl Camera {
    fn new(id: i64, rng: fastrand::Rng) -> Camera {
        Camera {
            id,
            rng,
            timelapse_seq: 0,
            timelapse_id: 0,
            image_count: 0,
            captured: 0,
            images_per_day: 0,
            target_images: 0,
            written: VecDeque::new(),
        }
    }

    fn run(mut self, shared: &Shared) {
        // Cameras do not all boot in the same millisecond.
        let boot = self.rng.u64(..shared.interval.as_millis().max(1) as u64);
        if shared.stop.sleep(Duration::from_millis(boot)) {
            return;
        }
        if !shared.produce(NewEvent::camera_status_changed(
            self.id, "online", "healthy",
        )) {
            return;
        }
        let first = self.start_timelapse();
        if !shared.produce(first) {
            return;
        }
        let mut phase = Phase::Capturing;
        loop {
            // ±20 % jitter, as real capture loops drift.
            let jitter = shared.interval.mul_f64(0.8 + 0.4 * self.rng.f64());
            if shared.stop.sleep(jitter) {
                return;
            }
            let (next, event) = self.step(phase);
            phase = next;
            // The file first: a hub may serve it as soon as the event is stored.
            if let (Some(dir), Some(event)) = (&shared.images_dir, &event)
                && let Some(name) = event.data["file_name"].as_str()
                && let Err(e) = self.write_frame(dir, name)
            {
                shared.fail(format!("camera-{}: cannot write {name}: {e}", self.id).into());
                return;
            }
            if let Some(event) = event
                && !shared.produce(event)
            {
                return;
            }
        }
    }

    /// One step of the camera's life: at most one event.
    fn step(&mut self, phase: Phase) -> (Phase, Option<NewEvent>) {
        match phase {
            Phase::Offline(0) => {
                let health = if self.rng.f64() < 0.3 {
                    "degraded"
                } else {
                    "healthy"
                };
                (
                    Phase::Capturing,
                    Some(NewEvent::camera_status_changed(self.id, "online", health)),
                )
            }
            Phase::Offline(n) => (Phase::Offline(n - 1), None),
            Phase::Paused(0) => (Phase::Capturing, Some(self.timelapse("running"))),
            Phase::Paused(n) => (Phase::Paused(n - 1), None),
            Phase::Capturing if self.image_count >= self.target_images => {
                let done = self.timelapse("completed");
                self.timelapse_id = 0; // none running: the end of this pause starts the next
                let steps = 2 + self.rng.u64(..4) as u32;
                (Phase::Paused(steps), Some(done))
            }
            Phase::Capturing => {
                let roll = self.rng.f64();
                if roll < 0.02 {
                    let steps = 2 + self.rng.u64(..6) as u32;
                    let event = NewEvent::camera_status_changed(self.id, "offline", "unreachable");
                    (Phase::Offline(steps), Some(event))
                } else if roll < 0.035 {
                    let steps = 3 + self.rng.u64(..8) as u32;
                    (Phase::Paused(steps), Some(self.timelapse("paused")))
                } else {
                    (Phase::Capturing, Some(self.capture()))
                }
            }
        }
    }

    fn start_timelapse(&mut self) -> NewEvent {
        self.timelapse_seq += 1;
        // Ids are unique across cameras: camera 3's fifth timelapse is 3005.
        self.timelapse_id = self.id * 1000 + self.timelapse_seq;
        self.image_count = 0;
        // Between one image every 15 min (96 a day) and one every hour (24 a day).
        self.images_per_day = [24, 48, 96][self.rng.usize(..3)];
        self.target_images = 100 + self.rng.u64(..300) as i64;
        self.timelapse("running")
    }

    /// A `timelapse_status_changed` for the current timelapse; "running" after a completed
    /// one starts the next timelapse.
    fn timelapse(&mut self, status: &str) -> NewEvent {
        if status == "running" && self.timelapse_id == 0 {
            return self.start_timelapse();
        }
        NewEvent::timelapse_status_changed(self.id, self.timelapse_id, status)
            .with_field("image_count", json!(self.image_count))
    }

    fn capture(&mut self) -> NewEvent {
        self.image_count += 1;
        self.captured += 1;
        let day_number = 1 + (self.image_count - 1) / self.images_per_day;
        let image_id = self.id * 1_000_000 + self.captured;
        let file_name = format!(
            "camera-{}/timelapse-{}/day-{day_number:03}/image-{:06}.jpg",
            self.id, self.timelapse_id, self.image_count
        );
        NewEvent::image_captured(self.id, self.timelapse_id, self.image_count, day_number)
            .with_field("image_id", json!(image_id))
            .with_field("file_name", Value::String(file_name))
    }
}

impl Camera {
    /// Writes the current capture as `dir/name`, then deletes the frames beyond the last
    /// [`KEEP_FRAMES`] (and their directories once empty).
    fn write_frame(&mut self, dir: &Path, name: &str) -> Result<(), BoxError> {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let slot = (self.image_count - 1).rem_euclid(self.images_per_day.max(1));
        let hour = 24.0 * slot as f64 / self.images_per_day.max(1) as f64;
        let pixels = frame::render(self.id, self.image_count, hour);
        let mut bytes = Vec::new();
        jpeg_encoder::Encoder::new(&mut bytes, 75).encode(
            &pixels,
            FRAME_WIDTH as u16,
            FRAME_HEIGHT as u16,
            jpeg_encoder::ColorType::Rgb,
        )?;
        // Written whole under another name, then renamed: a reader never sees half a file.
        let partial = path.with_extension("jpg.partial");
        std::fs::write(&partial, &bytes)?;
        std::fs::rename(&partial, &path)?;
        self.written.push_back(path);
        while self.written.len() > KEEP_FRAMES {
            let Some(old) = self.written.pop_front() else {
                break;
            };
            match std::fs::remove_file(&old) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot delete {}: {e}", old.display()).into()),
            }
            // The day's and the timelapse's directories, once empty (else this fails).
            for empty in old.ancestors().skip(1).take(2) {
                if empty == dir || std::fs::remove_dir(empty).is_err() {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// One simulated frame: pure pixels, no randomness (so `--seed` runs stay identical).
mod frame {
    use super::{FRAME_HEIGHT as H, FRAME_WIDTH as W};

    /// The digits 0-9, 3×5 pixels each, a row per 3 bits.
    const DIGITS: [[u8; 5]; 10] = [
        [0b111, 0b101, 0b101, 0b101, 0b111],
        [0b010, 0b110, 0b010, 0b010, 0b111],
        [0b111, 0b001, 0b111, 0b100, 0b111],
        [0b111, 0b001, 0b111, 0b001, 0b111],
        [0b101, 0b101, 0b111, 0b001, 0b001],
        [0b111, 0b100, 0b111, 0b001, 0b111],
        [0b111, 0b100, 0b111, 0b101, 0b111],
        [0b111, 0b001, 0b010, 0b010, 0b010],
        [0b111, 0b101, 0b111, 0b101, 0b111],
        [0b111, 0b101, 0b111, 0b001, 0b111],
    ];

    fn mix(a: [f64; 3], b: [f64; 3], t: f64) -> [f64; 3] {
        let t = t.clamp(0.0, 1.0);
        [0, 1, 2].map(|i| a[i] + (b[i] - a[i]) * t)
    }

    fn put(px: &mut [u8], x: usize, y: usize, rgb: [f64; 3]) {
        if x < W && y < H {
            let at = 3 * (y * W + x);
            for (i, c) in rgb.iter().enumerate() {
                px[at + i] = c.clamp(0.0, 255.0) as u8;
            }
        }
    }

    /// `n`'s digits from (x, y), each pixel a `scale`-sided block.
    fn number(px: &mut [u8], n: i64, x: usize, y: usize, scale: usize, rgb: [f64; 3]) {
        for (i, d) in n.to_string().bytes().enumerate() {
            let glyph = DIGITS[usize::from(d - b'0')];
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                let gx = x + (i * 4 + col) * scale + dx;
                                put(px, gx, y + row * scale + dy, rgb);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Camera `camera`'s frame `count` at `hour` (0-24) of its simulated day, as RGB.
    pub fn render(camera: i64, count: i64, hour: f64) -> Vec<u8> {
        let mut px = vec![0u8; W * H * 3];
        // Above 0 between 6 h and 18 h, 1 at noon.
        let elevation = (std::f64::consts::PI * (hour - 6.0) / 12.0).sin();
        let light = elevation.max(0.0);
        let dusk = (1.0 - (elevation.abs() * 4.0)).max(0.0); // near the horizon
        let horizon = H * 3 / 4;
        // Each camera's ground has a tint of its own.
        let tint = (camera.rem_euclid(6)) as f64 / 6.0;
        let ground_day = mix([60.0, 120.0, 50.0], [150.0, 120.0, 70.0], tint);
        for y in 0..H {
            let color = if y < horizon {
                let up = 1.0 - y as f64 / horizon as f64;
                let night = mix([20.0, 25.0, 60.0], [5.0, 5.0, 25.0], up);
                let day = mix([170.0, 210.0, 240.0], [60.0, 120.0, 220.0], up);
                let sky = mix(night, day, light.sqrt());
                mix(sky, [250.0, 140.0, 70.0], dusk * (1.0 - up) * 0.8)
            } else {
                mix([10.0, 15.0, 12.0], ground_day, 0.15 + 0.85 * light.sqrt())
            };
            for x in 0..W {
                put(&mut px, x, y, color);
            }
        }
        // The sun crosses from east (left) to west between 6 h and 18 h.
        if elevation > -0.1 {
            let sx = ((hour - 6.0) / 12.0 * W as f64) as i64;
            let sy = horizon as f64 - elevation * (horizon as f64 - 24.0);
            let sun = mix([255.0, 120.0, 40.0], [255.0, 240.0, 170.0], light * 2.0);
            for y in 0..horizon {
                for x in 0..W {
                    let (dx, dy) = (x as f64 - sx as f64, y as f64 - sy);
                    if dx * dx + dy * dy <= 14.0 * 14.0 {
                        put(&mut px, x, y, sun);
                    }
                }
            }
        }
        let ink = if light > 0.5 {
            [20.0, 20.0, 30.0]
        } else {
            [240.0, 240.0, 240.0]
        };
        number(&mut px, camera, 8, 8, 6, ink);
        number(&mut px, count, 8, H - 22, 3, [240.0, 240.0, 240.0]);
        px
    }
}

/// `POST /api/events` through ureq. No TLS (use it on a LAN, or put a TLS-terminating proxy
/// in front of the hub).
struct Poster {
    agent: ureq::Agent,
    url: ureq::http::Uri,
    token: Option<String>,
}

/// Hang guard for one POST, connect to answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from the hub (its answers are a few dozen bytes).
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

impl Poster {
    fn new(url: &str, token: Option<String>) -> Result<Poster, BoxError> {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(HTTP_TIMEOUT))
            .http_status_as_error(false) // a 4xx or 5xx carries the hub's reason
            .build()
            .into();
        let url = http_url::parse(url)?;
        Ok(Poster { agent, url, token })
    }

    fn post(&self, event: &NewEvent) -> Result<i64, Failure> {
        let body = json!({
            "type": event.event_type,
            "data": event.data,
            "priority": event.priority.as_str(),
            "source": event.source,
        });
        // One connection per event, as a camera posting now and then would: an idle
        // keep-alive connection would hold one of the hub's HTTP workers.
        let mut request = self.agent.post(&self.url).header("Connection", "close");
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let transient = |e: ureq::Error| Failure::Transient(e.to_string());
        let mut response = request
            .content_type("application/json")
            .send(body.to_string())
            .map_err(transient)?;
        let status = response.status().as_u16();
        let answer = response.body_mut().with_config().limit(MAX_ANSWER_BYTES);
        let answer = answer.read_to_vec().map_err(transient)?;
        let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        match status {
            201 => answer["id"]
                .as_i64()
                .ok_or_else(|| Failure::Fatal(format!("201 without an id: {answer}"))),
            // Busy or restarting: worth another try.
            500..=599 => Err(Failure::Transient(format!(
                "hub answered {status}: {answer}"
            ))),
            _ => Err(Failure::Fatal(format!("hub answered {status}: {answer}"))),
        }
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
