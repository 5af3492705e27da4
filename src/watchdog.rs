//! The camera dead-man's switch, run by the poller thread between its steps (it owns the
//! state the watchdog reads, and is the hub's writer, so the watchdog's own events are
//! queued for the poller's next step rather than emitted).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};

use crate::emitter::Job;
use crate::error::Result;
use crate::event::{Event, EventId, NewEvent, Priority};
use crate::state::{self, State, parse_utc_ms};

/// The camera dead-man's switch: a camera silent for 3× its learned capture interval (and
/// at least `floor`) gets a `camera_stale` event; `camera_recovered` when it reports again.
/// Runs on the poller thread, which owns the state it reads.
pub(crate) struct Watchdog {
    floor: Duration,
    /// Cameras with a stale/recovered event emitted but not yet folded into the state.
    asked: HashSet<i64>,
    last_check: Instant,
    /// Its events, stored by the poller's next step.
    queued: Vec<Job>,
    /// The answers to those, by camera.
    waiting: Vec<(i64, Receiver<Result<Vec<EventId>>>)>,
}

impl Watchdog {
    /// A watchdog that never calls a camera stale before `floor` of silence.
    pub(crate) fn new(floor: Duration) -> Watchdog {
        Watchdog {
            floor,
            asked: HashSet::new(),
            last_check: Instant::now(),
            queued: Vec::new(),
            waiting: Vec::new(),
        }
    }

    /// The least time between two checks.
    fn tick(&self) -> Duration {
        (self.floor / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Checks the cameras if a check is due, and moves the events it made into `group`.
    pub(crate) fn poll(&mut self, state: &State, group: &mut Vec<Job>) {
        if self.last_check.elapsed() >= self.tick() {
            self.check(state, state::now_ms());
        }
        group.append(&mut self.queued);
    }

    /// How long an idle poller may sleep before a check could find something: until the
    /// first watched camera's silence passes its limit (at least one tick), a tick while
    /// its own events wait to be stored, and for ever with no camera to watch.
    pub(crate) fn due(&self, state: &State, now_ms: i64) -> Duration {
        let tick = self.tick();
        if !self.queued.is_empty() || !self.waiting.is_empty() {
            return tick;
        }
        let soonest = state
            .cameras
            .values()
            .filter_map(|cam| self.watched(cam))
            .map(|(last, limit_ms)| last.saturating_add(limit_ms as i64))
            .min();
        match soonest {
            None => Duration::MAX,
            Some(at) => {
                let wait_ms = u64::try_from(at.saturating_sub(now_ms)).unwrap_or(0) + 1;
                Duration::from_millis(wait_ms).max(tick)
            }
        }
    }

    /// A camera the watchdog watches now: its last capture (ms since the epoch) and how
    /// long it may stay silent.
    fn watched(&self, cam: &state::CameraState) -> Option<(i64, f64)> {
        if cam.stale || self.asked.contains(&cam.camera_id) {
            return None;
        }
        // A camera known to be offline, or whose timelapse is paused or done, is not
        // expected to capture.
        if cam.status.as_deref() == Some("offline")
            || !matches!(cam.timelapse_status.as_deref(), None | Some("running"))
        {
            return None;
        }
        let interval = cam.capture_interval_ms?;
        let last = cam.last_capture_at.as_deref().and_then(parse_utc_ms)?;
        Some((last, (3.0 * interval).max(self.floor.as_millis() as f64)))
    }

    /// Emits `camera_stale` for cameras overdue now.
    fn check(&mut self, state: &State, now_ms: i64) {
        self.last_check = Instant::now();
        let overdue: Vec<_> = state
            .cameras
            .values()
            .filter_map(|cam| {
                let (last, limit_ms) = self.watched(cam)?;
                let silent_ms = (now_ms - last) as f64;
                let interval = cam.capture_interval_ms?;
                (silent_ms > limit_ms).then_some((cam.camera_id, silent_ms, interval))
            })
            .collect();
        for (camera_id, silent_ms, interval) in overdue {
            let event = NewEvent::new(
                state::CAMERA_STALE,
                serde_json::json!({
                    "camera_id": camera_id,
                    "silent_secs": (silent_ms / 10.0).round() / 100.0,
                    "expected_interval_secs": (interval / 10.0).round() / 100.0,
                }),
            )
            .with_priority(Priority::High)
            .with_source("watchdog");
            self.send(camera_id, event);
        }
    }

    /// After a batch: a stale camera that reported again gets `camera_recovered`.
    pub(crate) fn recoveries(&mut self, state: &State, batch: &[Event], now_ms: i64) {
        for e in batch {
            if e.event_type == state::CAMERA_STALE || e.event_type == state::CAMERA_RECOVERED {
                if let Some(id) = e.camera_id() {
                    self.asked.remove(&id);
                }
                continue;
            }
            if e.event_type != state::IMAGE_CAPTURED {
                continue;
            }
            let Some(id) = e.camera_id() else { continue };
            let Some(cam) = state.cameras.get(&id) else {
                continue;
            };
            if cam.stale && !self.asked.contains(&id) {
                let silent = cam
                    .last_capture_at
                    .as_deref()
                    .and_then(parse_utc_ms)
                    .map(|t| now_ms - t);
                let event = NewEvent::new(
                    state::CAMERA_RECOVERED,
                    serde_json::json!({"camera_id": id, "silent_secs": silent.map(|ms| ms as f64 / 1000.0)}),
                )
                .with_priority(Priority::High)
                .with_source("watchdog");
                self.send(id, event);
            }
        }
    }

    /// Queues `event` for the poller's next step (the poller is the hub's writer, so it
    /// cannot wait for an emit of its own).
    fn send(&mut self, camera_id: i64, event: NewEvent) {
        log::info!("watchdog: {} for camera {camera_id}", event.event_type);
        match Job::new(vec![event]) {
            Ok((job, answer)) => {
                self.asked.insert(camera_id);
                self.queued.push(job);
                self.waiting.push((camera_id, answer));
            }
            Err(e) => log::warn!("watchdog event refused: {}", e.chain()),
        }
    }

    /// After a step: a camera whose event was not stored is asked about again later.
    pub(crate) fn answered(&mut self) {
        let asked = &mut self.asked;
        self.waiting
            .retain(|(camera_id, answer)| match answer.try_recv() {
                Ok(Ok(_)) => false,
                Ok(Err(e)) => {
                    log::warn!("watchdog could not store its event: {}", e.chain());
                    asked.remove(camera_id);
                    false
                }
                Err(TryRecvError::Empty) => true,
                Err(TryRecvError::Disconnected) => {
                    asked.remove(camera_id);
                    false
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::CameraState;

    fn camera(id: i64, last: &str, interval_ms: f64) -> CameraState {
        CameraState {
            camera_id: id,
            last_capture_at: Some(last.to_owned()),
            capture_interval_ms: Some(interval_ms),
            ..CameraState::default()
        }
    }

    #[test]
    fn an_idle_poller_sleeps_until_the_first_camera_could_go_stale() {
        let dog = Watchdog::new(Duration::from_secs(60));
        let mut state = State::default();
        let now = parse_utc_ms("2026-12-02T00:10:00Z").unwrap_or_default();
        assert_eq!(
            dog.due(&state, now),
            Duration::MAX,
            "no camera: nothing to watch"
        );
        // 3 × 30 s = 90 s after 00:09:00 is 00:10:30; the floor (60 s) for camera 2 is
        // 00:10:50.
        state
            .cameras
            .insert(1, camera(1, "2026-12-02T00:09:00Z", 30_000.0));
        state
            .cameras
            .insert(2, camera(2, "2026-12-02T00:09:50Z", 1_000.0));
        assert_eq!(dog.due(&state, now), Duration::from_millis(30_001));
        // Overdue already: at least one tick (a quarter of the floor, at most 1 s).
        assert_eq!(dog.due(&state, now + 200_000), Duration::from_secs(1));
        // A stale or paused camera is not waited for.
        if let Some(c) = state.cameras.get_mut(&1) {
            c.stale = true;
        }
        assert_eq!(dog.due(&state, now), Duration::from_millis(50_001));
        if let Some(c) = state.cameras.get_mut(&2) {
            c.timelapse_status = Some("paused".into());
        }
        assert_eq!(dog.due(&state, now), Duration::MAX);
    }
}
