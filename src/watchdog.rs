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

    /// Checks the cameras if a check is due, and moves the events it made into `group`.
    pub(crate) fn poll(&mut self, state: &State, group: &mut Vec<Job>) {
        let tick = (self.floor / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        if self.last_check.elapsed() >= tick {
            self.check(state, state::now_ms());
        }
        group.append(&mut self.queued);
    }

    /// Emits `camera_stale` for cameras overdue now.
    fn check(&mut self, state: &State, now_ms: i64) {
        self.last_check = Instant::now();
        for cam in state.cameras.values() {
            if cam.stale || self.asked.contains(&cam.camera_id) {
                continue;
            }
            // A camera known to be offline, or whose timelapse is paused or done, is not
            // expected to capture.
            if cam.status.as_deref() == Some("offline")
                || !matches!(cam.timelapse_status.as_deref(), None | Some("running"))
            {
                continue;
            }
            let (Some(interval), Some(last)) = (
                cam.capture_interval_ms,
                cam.last_capture_at.as_deref().and_then(parse_utc_ms),
            ) else {
                continue;
            };
            let limit_ms = (3.0 * interval).max(self.floor.as_millis() as f64);
            let silent_ms = (now_ms - last) as f64;
            if silent_ms > limit_ms {
                let event = NewEvent::new(
                    state::CAMERA_STALE,
                    serde_json::json!({
                        "camera_id": cam.camera_id,
                        "silent_secs": (silent_ms / 10.0).round() / 100.0,
                        "expected_interval_secs": (interval / 10.0).round() / 100.0,
                    }),
                )
                .with_priority(Priority::High)
                .with_source("watchdog");
                self.send(cam.camera_id, event);
            }
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
