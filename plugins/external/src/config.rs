//! The `external` connection's settings (`[connections.x.config]`), checked
//! at load with messages naming the field.

use std::collections::BTreeMap;
use std::time::Duration;

use lessor_plugin::PluginError;
use serde::Deserialize;
use serde_json::Value;

pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The environment variables a plugin gets from lessor's own environment
/// (everything else is cleared: lessor's environment may hold a KEK or a
/// DSN). `env` adds to these.
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    command: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    call_timeout: Option<String>,
    start_timeout: Option<String>,
    shutdown_grace: Option<String>,
    #[serde(default)]
    config: Option<Value>,
}

/// A checked connection config.
#[derive(Debug, Clone)]
pub struct ExternalConfig {
    /// Program and arguments; the program is looked up on `PATH`.
    pub command: Vec<String>,
    /// Extra environment for the plugin.
    pub env: BTreeMap<String, String>,
    /// Longest one call may take (not `initialize`, see `start_timeout`),
    /// when set for this connection; see [`ExternalConfig::call_timeout`].
    pub call_timeout: Option<Duration>,
    /// Longest spawn + `initialize` + the first `validate` may take.
    pub start_timeout: Duration,
    /// How long a plugin gets to exit after `shutdown` before it is killed.
    pub shutdown_grace: Duration,
    /// Passed to the plugin unchanged in `initialize`.
    pub config: Value,
}

fn duration(field: &str, v: Option<String>, default: Duration) -> Result<Duration, PluginError> {
    let Some(s) = v else { return Ok(default) };
    let d = humantime::parse_duration(&s)
        .map_err(|e| PluginError::Misconfigured(format!("`{field}` = `{s}` is not a duration like \"30s\": {e}")))?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
        return Err(PluginError::Misconfigured(format!("`{field}` = `{s}` must be between 100ms and 10m")));
    }
    Ok(d)
}

impl ExternalConfig {
    /// The timeout of one call to the plugin: this connection's
    /// `call_timeout` when set (it is the more specific setting), but never
    /// longer than the core's (`leases.call_timeout`, `core`), which cancels
    /// a call past it anyway; unset, the core's.
    pub fn call_timeout(&self, core: Duration) -> Duration {
        self.call_timeout.map_or(core, |own| own.min(core))
    }

    pub fn parse(v: Value) -> Result<ExternalConfig, PluginError> {
        let v = if v.is_null() { Value::Object(Default::default()) } else { v };
        let raw: Raw = serde_json::from_value(v).map_err(|e| PluginError::Misconfigured(e.to_string()))?;
        let command = raw.command.ok_or_else(|| {
            PluginError::Misconfigured("`command` is required (e.g. [\"python3\", \"plugin.py\"])".into())
        })?;
        match command.first() {
            None => return Err(PluginError::Misconfigured("`command` is empty: it needs at least the program".into())),
            Some(p) if p.trim().is_empty() => {
                return Err(PluginError::Misconfigured("`command[0]` (the program) is empty".into()))
            }
            _ => {}
        }
        if let Some((i, _)) = command.iter().enumerate().find(|(_, a)| a.contains('\0')) {
            return Err(PluginError::Misconfigured(format!("`command[{i}]` contains a NUL byte")));
        }
        for k in raw.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(PluginError::Misconfigured(format!("`env` key `{k}` is not a variable name")));
            }
        }
        if let Some((k, _)) = raw.env.iter().find(|(_, v)| v.contains('\0')) {
            return Err(PluginError::Misconfigured(format!("`env.{k}` contains a NUL byte")));
        }
        let config = raw.config.unwrap_or_else(|| Value::Object(Default::default()));
        if !config.is_object() {
            return Err(PluginError::Misconfigured("`config` must be a table".into()));
        }
        Ok(ExternalConfig {
            command,
            env: raw.env,
            call_timeout: match raw.call_timeout {
                None => None,
                s @ Some(_) => Some(duration("call_timeout", s, Duration::ZERO)?),
            },
            start_timeout: duration("start_timeout", raw.start_timeout, DEFAULT_START_TIMEOUT)?,
            shutdown_grace: duration("shutdown_grace", raw.shutdown_grace, DEFAULT_SHUTDOWN_GRACE)?,
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        ExternalConfig::parse(v).unwrap_err().to_string()
    }

    #[test]
    fn fields_are_checked_by_name() {
        assert!(err(json!({})).contains("`command` is required"));
        assert!(err(json!({"command": []})).contains("`command` is empty"));
        assert!(err(json!({"command": ["x"], "call_timeout": "soon"})).contains("`call_timeout` = `soon`"));
        assert!(err(json!({"command": ["x"], "call_timeout": "1ms"})).contains("between 100ms and 10m"));
        assert!(err(json!({"command": ["x"], "env": {"A=B": "c"}})).contains("`env` key `A=B`"));
        assert!(err(json!({"command": ["x"], "config": 3})).contains("`config` must be a table"));
        assert!(err(json!({"command": ["x"], "comand": 1})).contains("unknown field `comand`"));
        let c = ExternalConfig::parse(json!({"command": ["python3", "p.py"], "call_timeout": "2s", "config": {"a": 1}})).unwrap();
        assert_eq!((c.call_timeout, c.start_timeout, c.config.clone()), (Some(Duration::from_secs(2)), DEFAULT_START_TIMEOUT, json!({"a": 1})));
        // The connection's own timeout wins when it is shorter; the core's caps it.
        assert_eq!(c.call_timeout(Duration::from_secs(30)), Duration::from_secs(2));
        assert_eq!(c.call_timeout(Duration::from_secs(1)), Duration::from_secs(1));
        let unset = ExternalConfig::parse(json!({"command": ["x"]})).unwrap();
        assert_eq!(unset.call_timeout(Duration::from_secs(7)), Duration::from_secs(7));
    }
}
