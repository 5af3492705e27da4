//! The HTTP transports: a webhook (POST the event's JSON envelope, as the stream sends it)
//! and the ntfy preset (POST ntfy's JSON publish format to the server root). One blocking
//! `ureq` agent per sink, on the sink's own thread; `http://`, and `https://` in a build with
//! the `tls` feature (ureq's rustls, on ring, trusting webpki-roots).

use std::time::Duration;

use serde_json::{Value, json};

use super::{Outcome, Transport};
use crate::config::{SinkConfig, SinkTarget};
use crate::error::clip;
use crate::event::{Event, Priority};

/// Most bytes of a refusing answer's body quoted in the log and status.
const REASON_CHARS: usize = 120;
/// Most bytes of an answer's body read (then dropped), so the connection can be reused.
const BODY_LIMIT_BYTES: u64 = 64 * 1024;

/// How a webhook answer's status decides the event's fate: 2xx delivered; 5xx, 408 (the
/// server timed out) and 429 (slow down) tried again; any other answer (4xx, or a 1xx/3xx
/// we do not follow) is a refusal for good, skipped.
pub(crate) fn classify(status: u16, body: &str) -> Outcome {
    let reason = || {
        let body = body.trim();
        if body.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {}", clip(body.to_owned(), REASON_CHARS))
        }
    };
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 | 500..=599 => Outcome::Failed(reason()),
        _ => Outcome::Refused(reason()),
    }
}

/// ntfy's priority (1 min … 5 max, 3 default) for ours.
pub(crate) fn ntfy_priority(p: Priority) -> u8 {
    match p {
        Priority::Low => 2,
        Priority::Normal => 3,
        Priority::High => 4,
        Priority::Critical => 5,
    }
}

/// Whether the ntfy preset notifies about this event: a stale camera, a camera gone
/// offline. A `camera_status_changed` to any other status is not worth a phone's buzz.
pub(crate) fn ntfy_wants(event: &Event) -> bool {
    match event.event_type.as_str() {
        "camera_status_changed" => {
            event.data.get("status").and_then(Value::as_str) == Some("offline")
        }
        _ => true,
    }
}

/// ntfy's JSON publish body for `event` (<https://docs.ntfy.sh/publish/#publish-as-json>).
pub(crate) fn ntfy_body(event: &Event, topic: &str, click: &str) -> Value {
    let camera = event
        .camera_id()
        .map_or_else(|| "A camera".to_owned(), |id| format!("Camera {id}"));
    // A fleet hub's phone should know which Pi: "Camera 3 of garden".
    let camera = match &event.host {
        Some(host) => format!("{camera} of {host}"),
        None => camera,
    };
    let num = |key: &str| event.data.get(key).and_then(Value::as_f64);
    let (title, message, tags) = match event.event_type.as_str() {
        "camera_stale" => (
            format!("{camera} is stale"),
            match (num("silent_secs"), num("expected_interval_secs")) {
                (Some(s), Some(e)) => {
                    format!("No capture for {s:.0} s (one expected every {e:.0} s).")
                }
                (Some(s), None) => format!("No capture for {s:.0} s."),
                _ => "No capture for longer than expected.".to_owned(),
            },
            vec!["warning", "camera"],
        ),
        "camera_status_changed" => {
            let status = event.data.get("status").and_then(Value::as_str);
            let health = event.data.get("health_status").and_then(Value::as_str);
            (
                format!("{camera} is {}", status.unwrap_or("changed")),
                match health {
                    Some(h) => format!("Status {}, health {h}.", status.unwrap_or("unknown")),
                    None => format!("Status {}.", status.unwrap_or("unknown")),
                },
                vec!["rotating_light", "camera"],
            )
        }
        other => (
            format!("{other} ({camera})"),
            Value::Object(event.data.clone()).to_string(),
            vec!["camera"],
        ),
    };
    json!({
        "topic": topic,
        "title": title,
        "message": message,
        "priority": ntfy_priority(event.priority),
        "tags": tags,
        "click": click,
    })
}

enum Body {
    Envelope,
    Ntfy { topic: String, click: String },
}

struct Http {
    agent: ureq::Agent,
    url: String,
    headers: Vec<(String, String)>,
    body: Body,
}

/// The transport of an HTTP `sink` (none for other kinds); `click` is the dashboard's
/// address (ntfy).
pub(crate) fn transport(sink: &SinkConfig, click: &str) -> Option<Box<dyn Transport>> {
    let agent = agent(sink.timeout);
    Some(Box::new(match &sink.target {
        SinkTarget::Webhook { url, headers } => Http {
            agent,
            url: url.clone(),
            headers: headers.clone(),
            body: Body::Envelope,
        },
        SinkTarget::Ntfy { server, topic } => Http {
            agent,
            url: server.clone(),
            headers: Vec::new(),
            body: Body::Ntfy {
                topic: topic.clone(),
                click: click.to_owned(),
            },
        },
        SinkTarget::Mqtt(_) => return None,
    }))
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        // Statuses are ours to classify, not errors.
        .http_status_as_error(false)
        // A redirect is answered as a refusal: a POST is not re-sent elsewhere by itself.
        .max_redirects(0)
        .user_agent(concat!("timelapse-events/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

impl Transport for Http {
    fn wants(&self, event: &Event) -> bool {
        match self.body {
            Body::Envelope => true,
            Body::Ntfy { .. } => ntfy_wants(event),
        }
    }

    fn deliver(&mut self, event: &Event) -> Outcome {
        let body = match &self.body {
            Body::Envelope => event.envelope().to_string(),
            Body::Ntfy { topic, click } => ntfy_body(event, topic, click).to_string(),
        };
        let mut rq = self.agent.post(&self.url);
        for (name, value) in &self.headers {
            rq = rq.header(name.as_str(), value.as_str());
        }
        match rq.content_type("application/json").send(body.as_bytes()) {
            Ok(mut answer) => {
                let status = answer.status().as_u16();
                // Only for the reason of a refusal; an unreadable body leaves it out.
                let text = answer
                    .body_mut()
                    .with_config()
                    .limit(BODY_LIMIT_BYTES)
                    .read_to_string()
                    .unwrap_or_default();
                classify(status, &text)
            }
            Err(e) => Outcome::Failed(clip(e.to_string(), REASON_CHARS)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decide_deliver_retry_or_skip() {
        for (status, want) in [
            (200, "delivered"),
            (204, "delivered"),
            (301, "refused"),
            (400, "refused"),
            (401, "refused"),
            (404, "refused"),
            (408, "failed"),
            (429, "failed"),
            (500, "failed"),
            (503, "failed"),
        ] {
            let got = match classify(status, "nope") {
                Outcome::Delivered => "delivered",
                Outcome::Refused(r) => {
                    assert_eq!(r, format!("HTTP {status}: nope"));
                    "refused"
                }
                Outcome::Failed(_) => "failed",
            };
            assert_eq!(got, want, "HTTP {status}");
        }
        assert_eq!(classify(404, " "), Outcome::Refused("HTTP 404".into()));
    }

    #[test]
    fn ntfy_gets_stale_and_offline_cameras_field_by_field() {
        let mut stale = Event::for_test(
            7,
            "camera_stale",
            "2026-12-01T03:00:00.000Z",
            json!({"camera_id": 3, "silent_secs": 1830.4, "expected_interval_secs": 600.0}),
        );
        stale.priority = Priority::High;
        assert!(ntfy_wants(&stale));
        let body = ntfy_body(&stale, "camera-alerts", "http://pi.local:8080/");
        assert_eq!(
            body,
            json!({
                "topic": "camera-alerts",
                "title": "Camera 3 is stale",
                "message": "No capture for 1830 s (one expected every 600 s).",
                "priority": 4,
                "tags": ["warning", "camera"],
                "click": "http://pi.local:8080/",
            })
        );
        let offline = Event::for_test(
            8,
            "camera_status_changed",
            "t",
            json!({"camera_id": 2, "status": "offline", "health_status": "unreachable"}),
        );
        assert!(ntfy_wants(&offline));
        let body = ntfy_body(&offline, "t", "c");
        assert_eq!(body["title"], "Camera 2 is offline");
        assert_eq!(body["message"], "Status offline, health unreachable.");
        assert_eq!(body["priority"], 3);
        assert_eq!(body["tags"], json!(["rotating_light", "camera"]));
        let mut remote = offline.clone();
        remote.host = Some("garden".into());
        assert_eq!(
            ntfy_body(&remote, "t", "c")["title"],
            "Camera 2 of garden is offline"
        );
        let online = Event::for_test(9, "camera_status_changed", "t", json!({"status": "online"}));
        assert!(!ntfy_wants(&online), "only offline buzzes a phone");
    }

    #[test]
    fn priorities_map_onto_ntfys_five_levels() {
        let got: Vec<u8> = [
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Critical,
        ]
        .into_iter()
        .map(ntfy_priority)
        .collect();
        assert_eq!(got, [2, 3, 4, 5]);
    }
}
