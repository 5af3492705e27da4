//! The `serve --config` file (TOML). `[[sink]]` tables become [`SinkConfig`]s; every other
//! top-level key is one `serve` flag's value, handed back with its line so that the command
//! line can merge it under its own flags and environment variables (which win). Pure but for
//! reading the secrets a sink names (`header_file`, `password_file`, `password_env`); runs
//! once, on the main thread, before the hub starts.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{MqttTarget, SinkConfig, parse_header};
use crate::error::{Error, Result, quote};
use crate::event::Priority;

/// One top-level key of the file other than `sink`: a `serve` flag's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSetting {
    /// The key with `-` written as `_`, e.g. `heartbeat_secs` (the flag's long name).
    pub key: String,
    /// Its line in the file, 1-based.
    pub line: usize,
    /// The value as the flag would take it; several for an array.
    pub values: Vec<String>,
    /// Whether the file gave an array (only repeatable flags take one).
    pub is_list: bool,
}

/// A parsed config file: flag values and sinks.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFile {
    /// The file as it was given.
    pub path: PathBuf,
    /// The flag values, in the file's order.
    pub settings: Vec<FileSetting>,
    /// The `[[sink]]` tables, in the file's order.
    pub sinks: Vec<SinkConfig>,
}

/// One `[[sink]]` table as written. Keys use `_`; an unknown one is an error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSink {
    kind: Spanned<String>,
    name: Spanned<String>,
    url: Spanned<String>,
    types: Option<Vec<String>>,
    min_priority: Option<Spanned<String>>,
    camera_ids: Option<Vec<i64>>,
    headers: Option<Spanned<BTreeMap<String, String>>>,
    header_file: Option<Spanned<PathBuf>>,
    timeout_secs: Option<Spanned<u64>>,
    window: Option<Spanned<u64>>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    password_env: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    ca_file: Option<Spanned<PathBuf>>,
    prefix: Option<Spanned<String>>,
    host_name: Option<Spanned<String>>,
    discovery_prefix: Option<Spanned<String>>,
}

impl FileSink {
    /// The first MQTT-only key given, with its span.
    fn mqtt_key(&self) -> Option<(&'static str, std::ops::Range<usize>)> {
        let span = |v: &Option<Spanned<String>>| v.as_ref().map(Spanned::span);
        [
            ("client_id", span(&self.client_id)),
            ("ca_file", self.ca_file.as_ref().map(Spanned::span)),
            ("prefix", span(&self.prefix)),
            ("host_name", span(&self.host_name)),
            ("discovery_prefix", span(&self.discovery_prefix)),
        ]
        .into_iter()
        .find_map(|(k, span)| span.map(|span| (k, span)))
    }
}

#[derive(Debug, Deserialize)]
struct SinkTables {
    #[serde(default)]
    sink: Vec<Spanned<FileSink>>,
}

impl ConfigFile {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// [`Error::ConfigFile`] naming the file, line and key.
    pub fn read(path: &Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
            path: path.to_owned(),
            line: 0,
            key: String::new(),
            reason: format!("cannot read it: {e}"),
        })?;
        ConfigFile::parse(path, &text)
    }

    /// Parses `text`, the contents of `path` (which only names the file in errors: a
    /// relative `header_file` is relative to the working directory).
    ///
    /// # Errors
    /// [`Error::ConfigFile`] for bad TOML, an unknown sink key, a wrong type, a duplicate
    /// sink name or a secret that cannot be read.
    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile> {
        let at = Locator { path, text };
        let top: BTreeMap<String, Spanned<toml::Value>> =
            toml::from_str(text).map_err(|e| at.toml_error(&e, ""))?;
        let mut settings = Vec::new();
        for (key, value) in &top {
            if key == "sink" {
                continue;
            }
            let key = key.replace('-', "_");
            let line = at.line(value.span().start);
            let scalar = |v: &toml::Value| match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                other => Err(at.error(
                    line,
                    &key,
                    format!("a {} is not a flag's value", other.type_str()),
                )),
            };
            let (values, is_list) = match value.get_ref() {
                toml::Value::Array(items) => {
                    (items.iter().map(scalar).collect::<Result<Vec<_>>>()?, true)
                }
                one => (vec![scalar(one)?], false),
            };
            settings.push(FileSetting {
                key,
                line,
                values,
                is_list,
            });
        }
        settings.sort_by_key(|s| s.line);
        let tables: SinkTables = toml::from_str(text).map_err(|e| at.toml_error(&e, "sink."))?;
        let mut sinks = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for table in tables.sink {
            let (sink, name_at) = at.sink(table.into_inner())?;
            let line = at.line(name_at);
            if let Some(first) = names.insert(sink.name.clone(), line) {
                return Err(at.error(
                    line,
                    "sink.name",
                    format!(
                        "{} is already the name of the sink on line {first}; a sink's cursor \
                         belongs to its name, so names must be unique",
                        quote(&sink.name)
                    ),
                ));
            }
            sinks.push(sink);
        }
        Ok(ConfigFile {
            path: path.to_owned(),
            settings,
            sinks,
        })
    }
}

/// Turns byte offsets into lines and builds the errors that name them.
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn error(&self, line: usize, key: &str, reason: String) -> Error {
        Error::ConfigFile {
            path: self.path.to_owned(),
            line,
            key: key.to_owned(),
            reason,
        }
    }

    /// toml's error, at its span's line, with the key written on that line (if any).
    fn toml_error(&self, e: &toml::de::Error, prefix: &str) -> Error {
        let line = e.span().map_or(0, |s| self.line(s.start));
        let key = self
            .text
            .lines()
            .nth(line.saturating_sub(1))
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim().trim_matches('"'))
            .filter(|k| !k.is_empty() && !k.starts_with('['))
            .map_or(String::new(), |k| format!("{prefix}{k}"));
        self.error(line, &key, e.message().trim().to_owned())
    }

    /// A `[[sink]]` table as a [`SinkConfig`], and the byte offset of its name.
    fn sink(&self, raw: FileSink) -> Result<(SinkConfig, usize)> {
        let bad = |span: std::ops::Range<usize>, key: &str, reason: String| {
            self.error(self.line(span.start), &format!("sink.{key}"), reason)
        };
        // A setting's refusal (bad URL, bad name) as this file's error at `span`.
        let refuse = |span: std::ops::Range<usize>, key: &'static str| {
            move |e: Error| match e {
                Error::Config { reason, .. } => bad(span.clone(), key, reason),
                other => other,
            }
        };
        let name = raw.name.get_ref().clone();
        let name_at = raw.name.span();
        let url = raw.url.get_ref().clone();
        let password = self.password(&raw)?;
        if raw.kind.get_ref() != "mqtt"
            && let Some((key, span)) = raw.mqtt_key()
        {
            return Err(bad(span, key, "only an `mqtt` sink takes this key".into()));
        }
        let mut sink = match raw.kind.get_ref().as_str() {
            "webhook" => {
                let mut headers = Vec::new();
                if let Some(inline) = &raw.headers {
                    for (k, v) in inline.get_ref() {
                        headers.push(
                            parse_header(&format!("{k}: {v}"))
                                .map_err(refuse(inline.span(), "headers"))?,
                        );
                    }
                }
                if let Some(file) = &raw.header_file {
                    let text = std::fs::read_to_string(file.get_ref()).map_err(|e| {
                        bad(
                            file.span(),
                            "header_file",
                            format!("cannot read {}: {e}", file.get_ref().display()),
                        )
                    })?;
                    for l in text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    {
                        headers.push(parse_header(l).map_err(refuse(file.span(), "header_file"))?);
                    }
                }
                if let Some(secret) = password {
                    headers.push(("Authorization".to_owned(), format!("Bearer {secret}")));
                }
                SinkConfig::webhook(&name, &url, headers)
            }
            "ntfy" => {
                if password.is_some() || raw.headers.is_some() || raw.header_file.is_some() {
                    return Err(bad(
                        raw.kind.span(),
                        "kind",
                        "an ntfy sink takes no headers or password in this build".into(),
                    ));
                }
                SinkConfig::ntfy(&name, &url).map_err(refuse(raw.url.span(), "url"))?
            }
            "mqtt" => {
                if raw.headers.is_some() || raw.header_file.is_some() {
                    return Err(bad(
                        raw.kind.span(),
                        "kind",
                        "an mqtt sink takes no headers (its user is in the URL)".into(),
                    ));
                }
                let mut target = MqttTarget::new(&url);
                target.password = password;
                target.ca_file = raw.ca_file.map(Spanned::into_inner);
                target.client_id = raw.client_id.map(Spanned::into_inner);
                target.host_name = raw.host_name.map(Spanned::into_inner);
                if let Some(p) = raw.prefix {
                    target.prefix = p.into_inner();
                }
                if let Some(p) = raw.discovery_prefix {
                    target.discovery_prefix = p.into_inner();
                }
                SinkConfig::mqtt(&name, target)
            }
            other => {
                return Err(bad(
                    raw.kind.span(),
                    "kind",
                    format!("{} is not `webhook`, `ntfy` or `mqtt`", quote(other)),
                ));
            }
        };
        if let Some(types) = raw.types {
            sink.types = Some(types);
        }
        if let Some(p) = &raw.min_priority {
            sink.min_priority = p
                .get_ref()
                .parse::<Priority>()
                .map_err(|e| bad(p.span(), "min_priority", e.to_string()))?;
        }
        if let Some(ids) = raw.camera_ids {
            sink.camera_ids = Some(ids);
        }
        if let Some(t) = &raw.timeout_secs {
            sink.timeout = Duration::from_secs(*t.get_ref());
        }
        if let Some(w) = &raw.window {
            sink.window = usize::try_from(*w.get_ref()).unwrap_or(usize::MAX);
        }
        sink.validate().map_err(refuse(name_at.clone(), "name"))?;
        Ok((sink, name_at.start))
    }

    /// The sink's password, from at most one of `password`, `password_file`, `password_env`.
    fn password(&self, raw: &FileSink) -> Result<Option<String>> {
        let given: Vec<_> = [
            raw.password.as_ref().map(Spanned::span),
            raw.password_file.as_ref().map(Spanned::span),
            raw.password_env.as_ref().map(Spanned::span),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let [_, second, ..] = given.as_slice() {
            return Err(self.error(
                self.line(second.start),
                "sink.password",
                "give one of password, password_file and password_env".into(),
            ));
        }
        if let Some(p) = &raw.password {
            log::warn!(
                "config file {} line {}: sink {} has its password inline; prefer \
                 password_file or password_env",
                self.path.display(),
                self.line(p.span().start),
                quote(raw.name.get_ref())
            );
            return Ok(Some(p.get_ref().clone()));
        }
        if let Some(file) = &raw.password_file {
            let text = std::fs::read_to_string(file.get_ref()).map_err(|e| {
                self.error(
                    self.line(file.span().start),
                    "sink.password_file",
                    format!("cannot read {}: {e}", file.get_ref().display()),
                )
            })?;
            return Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()));
        }
        if let Some(var) = &raw.password_env {
            let value = std::env::var(var.get_ref()).map_err(|_| {
                self.error(
                    self.line(var.span().start),
                    "sink.password_env",
                    format!("the environment has no {}", quote(var.get_ref())),
                )
            })?;
            return Ok(Some(value));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SinkTarget;

    fn parse(text: &str) -> Result<ConfigFile> {
        ConfigFile::parse(Path::new("/etc/tle.toml"), text)
    }

    fn refusal(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(Error::ConfigFile {
                line, key, reason, ..
            }) => (line, key, reason),
            other => panic!("expected a config file error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn flags_come_back_with_their_lines_and_dashes_as_underscores() -> Result<()> {
        let file = parse(
            "# hub\nbind = \"0.0.0.0:9000\"\nheartbeat-secs = 5\n\ncors_origin = [\"http://a\", \"http://b\"]\n",
        )?;
        let got: Vec<_> = file
            .settings
            .iter()
            .map(|s| (s.key.as_str(), s.line, s.values.clone(), s.is_list))
            .collect();
        assert_eq!(
            got,
            vec![
                ("bind", 2, vec!["0.0.0.0:9000".to_owned()], false),
                ("heartbeat_secs", 3, vec!["5".to_owned()], false),
                (
                    "cors_origin",
                    5,
                    vec!["http://a".to_owned(), "http://b".to_owned()],
                    true
                ),
            ]
        );
        Ok(())
    }

    #[test]
    fn sinks_keep_their_own_filters() -> Result<()> {
        let file = parse(
            r#"
[[sink]]
kind = "webhook"
name = "alerts"
url = "http://127.0.0.1:9/a"
types = ["camera_stale"]
min_priority = "high"
camera_ids = [1, 2]
timeout_secs = 3
headers = { X-Tag = "cams" }

[[sink]]
kind = "ntfy"
name = "phone"
url = "http://ntfy.local/cams"

[[sink]]
kind = "mqtt"
name = "ha"
url = "mqtt://tle@broker.lan"
password_env = "PATH"
types = ["image_captured"]
host_name = "garden"
prefix = "cams"
"#,
        )?;
        assert_eq!(file.sinks.len(), 3);
        let a = &file.sinks[0];
        assert_eq!(a.name, "alerts");
        assert_eq!(a.types, Some(vec!["camera_stale".to_owned()]));
        assert_eq!(a.min_priority, Priority::High);
        assert_eq!(a.camera_ids, Some(vec![1, 2]));
        assert_eq!(a.timeout, Duration::from_secs(3));
        assert_eq!(
            a.target,
            SinkTarget::Webhook {
                url: "http://127.0.0.1:9/a".into(),
                headers: vec![("X-Tag".into(), "cams".into())]
            }
        );
        let n = &file.sinks[1];
        assert_eq!(n.name, "phone");
        assert!(matches!(&n.target, SinkTarget::Ntfy { topic, .. } if topic == "cams"));
        let m = &file.sinks[2];
        assert_eq!(m.window, 64, "an mqtt sink's own default window");
        assert_eq!(m.types, Some(vec!["image_captured".to_owned()]));
        let SinkTarget::Mqtt(t) = &m.target else {
            panic!("an mqtt target: {:?}", m.target);
        };
        assert_eq!(t.url, "mqtt://tle@broker.lan");
        assert_eq!(t.password, std::env::var("PATH").ok());
        assert_eq!(t.host_name.as_deref(), Some("garden"));
        assert_eq!(
            (t.prefix.as_str(), t.discovery_prefix.as_str()),
            ("cams", "homeassistant")
        );
        assert_eq!(t.client_id, None);
        Ok(())
    }

    #[test]
    fn refusals_name_the_line_and_the_key() {
        let sink = "[[sink]]\nkind = \"webhook\"\nname = \"a\"\nurl = \"http://x/\"\n";
        let table: &[(String, usize, &str, &str)] = &[
            (
                "heartbeat_secs = [[1]]\n".into(),
                1,
                "heartbeat_secs",
                "array",
            ),
            ("bind = 1.5\n".into(), 1, "bind", "float"),
            (
                format!("{sink}nmae = \"b\"\n"),
                5,
                "sink.nmae",
                "unknown field `nmae`",
            ),
            (
                format!("{sink}timeout_secs = \"3\"\n"),
                5,
                "sink.timeout_secs",
                "invalid type",
            ),
            (
                format!("{sink}\n{sink}"),
                8,
                "sink.name",
                "already the name",
            ),
            (
                format!("{sink}prefix = \"cams\"\n"),
                5,
                "sink.prefix",
                "only an `mqtt` sink",
            ),
            (
                format!("{sink}ca_file = \"/etc/ca.pem\"\n"),
                5,
                "sink.ca_file",
                "only an `mqtt` sink",
            ),
            (
                format!(
                    "{}ca_file = \"/etc/ca.pem\"\n",
                    sink.replace("webhook\"", "mqtt\"")
                        .replace("http:", "mqtt:")
                ),
                3,
                "sink.name",
                "only for an mqtts://",
            ),
            (
                sink.replace("webhook", "mqtt"),
                3,
                "sink.name",
                "not an mqtt:// URL",
            ),
            (
                sink.replace("webhook", "smtp"),
                2,
                "sink.kind",
                "not `webhook`",
            ),
            (
                sink.replace("\"a\"", "\"Alerts!\""),
                3,
                "sink.name",
                "1 to 6",
            ),
            (
                format!("{sink}min_priority = \"loud\"\n"),
                5,
                "sink.min_priority",
                "loud",
            ),
            (
                format!("{sink}password_env = \"TLE_NO_SUCH_VAR_X\"\n"),
                5,
                "sink.password_env",
                "no `TLE_NO_SUCH_VAR_X`",
            ),
            (
                format!("{sink}header_file = \"/nonexistent/h\"\n"),
                5,
                "sink.header_file",
                "cannot read",
            ),
            ("bind = \n".into(), 1, "bind", ""),
        ];
        for (text, line, key, reason) in table {
            let got = refusal(text);
            println!("{text:?} -> {got:?}");
            assert_eq!((got.0, got.1.as_str()), (*line, *key), "{text:?}: {got:?}");
            assert!(got.2.contains(reason), "{text:?}: {got:?} lacks {reason:?}");
        }
    }

    #[test]
    fn a_password_file_becomes_a_bearer_header() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("tle-cf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            op: "mkdir",
            source,
        })?;
        let secret = dir.join("pw");
        std::fs::write(&secret, "s3cret\n").map_err(|source| Error::Io {
            op: "write",
            source,
        })?;
        let file = parse(&format!(
            "[[sink]]\nkind = \"webhook\"\nname = \"a\"\nurl = \"http://x/\"\npassword_file = {:?}\n",
            secret.display().to_string()
        ));
        let _ = std::fs::remove_dir_all(&dir); // our own temp dir; a leftover is harmless
        let file = file?;
        assert!(
            matches!(&file.sinks[0].target, SinkTarget::Webhook { headers, .. }
            if headers == &[("Authorization".to_owned(), "Bearer s3cret".to_owned())])
        );
        Ok(())
    }
}
