//! The MQTT sink's topics and Home Assistant discovery payloads (pure).
//! Discovery: <https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery>; a config is
//! retained at `<discovery_prefix>/<component>/<node_id>/<object_id>/config`.

use serde_json::{Value, json};

use crate::event::Event;

pub(crate) use crate::mqtt::level;

/// An id part for Home Assistant: lowercase a-z 0-9, anything else `_`.
pub(crate) fn id_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The topics one hub publishes under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Topics {
    /// `<prefix>/<host>`.
    pub(crate) base: String,
    pub(crate) host: String,
    pub(crate) discovery_prefix: String,
}

/// One Home Assistant entity of a camera device.
struct Entity {
    key: &'static str,
    name: &'static str,
    component: &'static str,
    value_template: &'static str,
    extra: fn() -> Value,
}

const ENTITIES: [Entity; 8] = [
    Entity {
        key: "image_count",
        name: "Image count",
        component: "sensor",
        value_template: "{{ value_json.image_count }}",
        extra: || json!({"state_class": "measurement", "icon": "mdi:image-multiple"}),
    },
    Entity {
        key: "day_number",
        name: "Day number",
        component: "sensor",
        value_template: "{{ value_json.day_number }}",
        extra: || json!({"icon": "mdi:calendar-today"}),
    },
    Entity {
        key: "last_capture",
        name: "Last capture",
        component: "sensor",
        value_template: "{{ value_json.last_capture_at }}",
        extra: || json!({"device_class": "timestamp"}),
    },
    Entity {
        key: "status",
        name: "Status",
        component: "sensor",
        value_template: "{{ value_json.status }}",
        extra: || json!({}),
    },
    Entity {
        key: "health",
        name: "Health",
        component: "sensor",
        value_template: "{{ value_json.health_status }}",
        extra: || json!({}),
    },
    Entity {
        key: "timelapse_status",
        name: "Timelapse status",
        component: "sensor",
        value_template: "{{ value_json.timelapse_status }}",
        extra: || json!({}),
    },
    Entity {
        key: "stale",
        name: "Stale",
        component: "binary_sensor",
        value_template: "{{ 'ON' if value_json.stale else 'OFF' }}",
        extra: || json!({"device_class": "problem", "payload_on": "ON", "payload_off": "OFF"}),
    },
    Entity {
        key: "online",
        name: "Online",
        component: "binary_sensor",
        value_template: "{{ 'ON' if value_json.status == 'online' else 'OFF' }}",
        extra: || json!({"device_class": "connectivity", "payload_on": "ON", "payload_off": "OFF"}),
    },
];

impl Topics {
    pub(crate) fn new(prefix: &str, host: &str, discovery_prefix: &str) -> Topics {
        Topics {
            base: format!("{}/{}", level(prefix), level(host)),
            host: host.to_owned(),
            discovery_prefix: level(discovery_prefix),
        }
    }

    /// Where each event goes: `<prefix>/<host>/events/<type>`.
    pub(crate) fn event(&self, event_type: &str) -> String {
        format!("{}/events/{}", self.base, level(event_type))
    }

    /// An event's payload: the stream's envelope, plus `host` and `cursor` (its place in this
    /// hub's log, `<log id>-<seq>`), by which a fleet hub stores it once however often it
    /// arrives.
    pub(crate) fn payload(&self, e: &Event) -> String {
        let mut v = e.envelope();
        if let Value::Object(m) = &mut v {
            m.insert("host".into(), Value::String(self.host.clone()));
            m.insert("cursor".into(), Value::String(e.cursor.to_string()));
        }
        v.to_string()
    }

    /// A camera's retained state: `<prefix>/<host>/cameras/<id>/state`.
    pub(crate) fn camera_state(&self, camera_id: i64) -> String {
        format!("{}/cameras/{camera_id}/state", self.base)
    }

    /// The hub's retained `online`/`offline`: `<prefix>/<host>/availability`.
    pub(crate) fn availability(&self) -> String {
        format!("{}/availability", self.base)
    }

    /// Home Assistant announces itself here (`online` after it starts).
    pub(crate) fn birth(&self) -> String {
        format!("{}/status", self.discovery_prefix)
    }

    /// Every discovery config of one camera: (topic, retained payload).
    pub(crate) fn discovery(&self, camera_id: i64) -> Vec<(String, Value)> {
        let host = id_part(&self.host);
        let node_id = format!("timelapse_{host}");
        let device_id = format!("timelapse_{host}_{camera_id}");
        let device = json!({
            "identifiers": [device_id],
            "name": format!("Timelapse camera {camera_id} ({})", self.host),
            "manufacturer": "timelapse-events",
            "model": "Timelapse camera",
            "sw_version": env!("CARGO_PKG_VERSION"),
        });
        ENTITIES
            .iter()
            .map(|e| {
                let object_id = format!("camera_{camera_id}_{}", e.key);
                let unique_id = format!("{device_id}_{}", e.key);
                let mut config = json!({
                    "name": e.name,
                    "unique_id": unique_id,
                    "default_entity_id": format!("{}.{unique_id}", e.component),
                    "state_topic": self.camera_state(camera_id),
                    "value_template": e.value_template,
                    "availability_topic": self.availability(),
                    "payload_available": "online",
                    "payload_not_available": "offline",
                    "device": device,
                });
                if let (Value::Object(c), Value::Object(x)) = (&mut config, (e.extra)()) {
                    c.extend(x);
                }
                let topic = format!(
                    "{}/{}/{node_id}/{object_id}/config",
                    self.discovery_prefix, e.component
                );
                (topic, config)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_payload_is_the_envelope_with_host_and_cursor() {
        let t = Topics::new("timelapse", "garden", "homeassistant");
        let e = Event::for_test(
            42,
            "image_captured",
            "2026-12-01T10:00:00.000Z",
            json!({"camera_id": 1}),
        );
        let v: Value = serde_json::from_str(&t.payload(&e)).unwrap_or_default();
        assert_eq!(v["host"], "garden");
        assert_eq!(v["cursor"], "00000001-42");
        assert_eq!(v["type"], "image_captured");
        assert_eq!(v["data"], json!({"camera_id": 1}));
        assert_eq!(v["id"], 42);
    }

    #[test]
    fn topics_follow_prefix_host_and_type() {
        let t = Topics::new("timelapse", "pi/4", "homeassistant");
        assert_eq!(
            t.event("image_captured"),
            "timelapse/pi_4/events/image_captured"
        );
        assert_eq!(t.event("a/+#"), "timelapse/pi_4/events/a___");
        assert_eq!(t.camera_state(3), "timelapse/pi_4/cameras/3/state");
        assert_eq!(t.availability(), "timelapse/pi_4/availability");
        assert_eq!(t.birth(), "homeassistant/status");
    }

    #[test]
    fn discovery_has_eight_entities_each_with_the_documented_fields() {
        let t = Topics::new("timelapse", "Pi-4", "homeassistant");
        let configs = t.discovery(7);
        let topics: Vec<&str> = configs.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/sensor/timelapse_pi_4/camera_7_image_count/config",
                "homeassistant/sensor/timelapse_pi_4/camera_7_day_number/config",
                "homeassistant/sensor/timelapse_pi_4/camera_7_last_capture/config",
                "homeassistant/sensor/timelapse_pi_4/camera_7_status/config",
                "homeassistant/sensor/timelapse_pi_4/camera_7_health/config",
                "homeassistant/sensor/timelapse_pi_4/camera_7_timelapse_status/config",
                "homeassistant/binary_sensor/timelapse_pi_4/camera_7_stale/config",
                "homeassistant/binary_sensor/timelapse_pi_4/camera_7_online/config",
            ]
        );
        for (topic, c) in &configs {
            assert_eq!(
                c["state_topic"], "timelapse/Pi-4/cameras/7/state",
                "{topic}"
            );
            assert_eq!(c["availability_topic"], "timelapse/Pi-4/availability");
            assert_eq!(c["payload_available"], "online");
            assert_eq!(c["payload_not_available"], "offline");
            assert_eq!(c["device"]["identifiers"], json!(["timelapse_pi_4_7"]));
            assert_eq!(c["device"]["manufacturer"], "timelapse-events");
            assert!(c["device"]["sw_version"].is_string());
            let unique = c["unique_id"].as_str().unwrap_or_default();
            assert!(unique.starts_with("timelapse_pi_4_7_"), "{unique}");
            let component = topic.split('/').nth(1).unwrap_or_default();
            assert_eq!(c["default_entity_id"], format!("{component}.{unique}"));
            assert!(
                c["value_template"]
                    .as_str()
                    .unwrap_or("")
                    .contains("value_json")
            );
        }
        assert_eq!(configs[2].1["device_class"], "timestamp");
        assert_eq!(configs[6].1["device_class"], "problem");
        assert_eq!(configs[7].1["device_class"], "connectivity");
    }
}
