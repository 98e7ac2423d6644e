//! What the daemon logs, set at start (`VRINGSWITCH_LOG`) and changed while it runs
//! (`GET`/`PATCH /v1/log`, `vringctl log`), as `ovs-appctl vlog/set` does for OVS.
//!
//! The setting is a `tracing` filter: a level for messages in general and levels for
//! modules (`info,vringswitch_ports=debug`). It is kept here as that list, so that one
//! module's level can change without retyping the rest, and each module's level in effect
//! can be shown; applying it is the subscriber's business (a reload handle, given as a
//! closure, so that this module needs no subscriber type).

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A log level, or `off`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    pub const ALL: [Level; 6] = [
        Level::Off,
        Level::Error,
        Level::Warn,
        Level::Info,
        Level::Debug,
        Level::Trace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }

    /// A level as `tracing` filters spell it (any case).
    pub fn parse(s: &str) -> Option<Level> {
        let s = s.trim().to_ascii_lowercase();
        Level::ALL.into_iter().find(|l| l.name() == s)
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The daemon's modules, by the short names `vringctl log` takes, and the code each covers
/// (a `tracing` target: a module path, covering everything under it).
pub const MODULES: &[(&str, &str, &str)] = &[
    ("daemon", "vringswitch", "start, stop, signals"),
    (
        "control",
        "vringswitch_control",
        "changes to bridges, ports and the FDB",
    ),
    (
        "http",
        "vringswitch_control::http",
        "the API: each request at debug",
    ),
    (
        "switch",
        "vringswitch_switch",
        "forwarding engine and worker cores",
    ),
    ("ports", "vringswitch_ports", "every port kind"),
    (
        "vhost_user",
        "vringswitch_ports::vhost_user",
        "vhost-user connections",
    ),
    ("tap", "vringswitch_ports::tap", "TAP ports"),
    ("afxdp", "vringswitch_ports::afxdp", "AF_XDP ports"),
    (
        "libxdp",
        "vringswitch::libxdp",
        "messages of libxdp and libbpf",
    ),
    (
        "vhost_user_backend",
        "vhost_user_backend",
        "the vhost-user protocol library",
    ),
    (
        "virtio_queue",
        "virtio_queue",
        "the virtio ring library (off unless named: the switch counts ring faults itself)",
    ),
];

/// The target a module name stands for: a short name of [`MODULES`], or a target itself
/// (a Rust module path).
pub fn target_of(module: &str) -> Result<String, String> {
    if let Some((_, target, _)) = MODULES.iter().find(|(name, _, _)| *name == module) {
        return Ok((*target).to_owned());
    }
    let path_like = !module.is_empty()
        && module.split("::").all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if path_like && (module.contains("::") || module.starts_with("vringswitch")) {
        return Ok(module.to_owned());
    }
    let names: Vec<&str> = MODULES.iter().map(|(n, _, _)| *n).collect();
    Err(format!(
        "{module:?} is not a module: one of {}, or a Rust module path such as \
         vringswitch_ports::vhost_user",
        names.join(", ")
    ))
}

/// A log setting: the level of messages in general, levels for modules, and directives this
/// module does not take apart (span and field filters), kept as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLevels {
    pub default: Level,
    /// (target, level), in the order given.
    pub modules: Vec<(String, Level)>,
    pub other: Vec<String>,
}

impl LogLevels {
    /// Reads a `VRINGSWITCH_LOG` setting. A setting that gives no level for messages in
    /// general (`verbose`, a typo, reads as a module to log at trace, and would leave every
    /// other message out, errors included) is taken with `info` before it; the returned
    /// warning says so. virtio-queue is off unless named.
    pub fn from_setting(setting: Option<&str>) -> (LogLevels, Option<String>) {
        let given = setting.unwrap_or("info");
        let mut levels = LogLevels {
            default: Level::Info,
            modules: Vec::new(),
            other: Vec::new(),
        };
        let mut has_default = false;
        for directive in given.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            if let Some(level) = Level::parse(directive) {
                levels.default = level;
                has_default = true;
                continue;
            }
            let simple = match directive.split_once('=') {
                Some((target, level)) if !target.contains(['[', '{']) => {
                    Level::parse(level).map(|l| (target.trim().to_owned(), l))
                }
                None if !directive.contains(['[', '{']) => {
                    Some((directive.to_owned(), Level::Trace))
                }
                _ => None,
            };
            match simple {
                Some((target, level)) => levels.set_module(&target, Some(level)),
                None => levels.other.push(directive.to_owned()),
            }
        }
        if !levels.modules.iter().any(|(t, _)| t == "virtio_queue") {
            levels.modules.push(("virtio_queue".to_owned(), Level::Off));
        }
        let warning = (!has_default).then(|| {
            format!(
                "VRINGSWITCH_LOG={given:?} gives no level for the daemon's messages (one of \
                 trace, debug, info, warn, error, off, e.g. VRINGSWITCH_LOG=debug): they are \
                 logged at info, with {given:?} as well"
            )
        });
        (levels, warning)
    }

    /// Sets `target`'s own level, or removes it (`None`: it follows the levels above it).
    pub fn set_module(&mut self, target: &str, level: Option<Level>) {
        let at = self.modules.iter().position(|(t, _)| t == target);
        match (at, level) {
            (Some(i), Some(l)) => self.modules[i].1 = l,
            (None, Some(l)) => self.modules.push((target.to_owned(), l)),
            (Some(i), None) => {
                self.modules.remove(i);
            }
            (None, None) => {}
        }
    }

    /// The level messages of `target` are logged at: that of the longest module set that
    /// `target` starts with, as `tracing` filters choose, else the general one.
    pub fn effective(&self, target: &str) -> Level {
        self.modules
            .iter()
            .filter(|(t, _)| target.starts_with(t.as_str()))
            .max_by_key(|(t, _)| t.len())
            .map_or(self.default, |(_, l)| *l)
    }

    /// Whether `target` has a level of its own.
    pub fn own(&self, target: &str) -> Option<Level> {
        self.modules
            .iter()
            .find(|(t, _)| t == target)
            .map(|(_, l)| *l)
    }

    /// The setting as a `tracing` filter.
    pub fn filter(&self) -> String {
        std::iter::once(self.default.name().to_owned())
            .chain(self.modules.iter().map(|(t, l)| format!("{t}={l}")))
            .chain(self.other.iter().cloned())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The filter to start with, from `VRINGSWITCH_LOG` ([`LogLevels::from_setting`]), and
/// the warning to log once logging works. A setting whose filter does not parse is
/// replaced by `info`.
pub fn at_start(
    setting: Option<&str>,
) -> (LogLevels, tracing_subscriber::EnvFilter, Option<String>) {
    let (levels, warning) = LogLevels::from_setting(setting);
    match tracing_subscriber::EnvFilter::try_new(levels.filter()) {
        Ok(filter) => (levels, filter, warning),
        Err(e) => {
            let (levels, _) = LogLevels::from_setting(None);
            let filter = tracing_subscriber::EnvFilter::new(levels.filter());
            let given = setting.unwrap_or_default();
            let warning = format!(
                "VRINGSWITCH_LOG={given:?} is not a log filter ({e}): messages are logged at \
                 info"
            );
            (levels, filter, Some(warning))
        }
    }
}

/// Applies a filter to the running subscriber; an error says why it was not taken.
pub type ApplyFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The log setting of a running daemon, and how to change it.
pub struct LogControl {
    apply: ApplyFilter,
    state: Mutex<(LogLevels, LogLevels)>,
}

/// A module's level in a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModuleLevel {
    /// The name `vringctl log set` takes.
    pub name: String,
    /// The code it covers (a Rust module path).
    pub target: String,
    /// The level its messages are logged at.
    pub level: Level,
    /// Whether that level is its own (else it follows the general level or a module above).
    pub own: bool,
    pub about: String,
}

/// `GET /v1/log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogView {
    /// The level of messages in general.
    pub default: Level,
    /// Each known module, and any other target given a level.
    pub modules: Vec<ModuleLevel>,
    /// The whole setting as a filter (what VRINGSWITCH_LOG would say).
    pub filter: String,
    /// The setting at start, which a reset restores.
    pub at_start: String,
}

/// `PATCH /v1/log`: a reset first (if asked), then the general level, then modules' levels
/// (`null`: the module follows the levels above it again).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogPatch {
    #[serde(default)]
    pub reset: bool,
    #[serde(default)]
    pub default: Option<Level>,
    /// Module name (or Rust module path) to level; `null` removes the module's own level.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub modules: std::collections::BTreeMap<String, Option<Level>>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("filter", &self.view().filter)
            .finish()
    }
}

impl LogControl {
    /// The setting in effect at start, and what applies a new one.
    pub fn new(at_start: LogLevels, apply: ApplyFilter) -> LogControl {
        LogControl {
            apply,
            state: Mutex::new((at_start.clone(), at_start)),
        }
    }

    pub fn view(&self) -> LogView {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        view_of(&state.0, &state.1)
    }

    /// Applies `patch` as a whole, or nothing of it.
    pub fn change(&self, patch: &LogPatch) -> Result<LogView, String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = if patch.reset {
            state.1.clone()
        } else {
            state.0.clone()
        };
        if let Some(level) = patch.default {
            next.default = level;
        }
        for (module, level) in &patch.modules {
            next.set_module(&target_of(module)?, *level);
        }
        (self.apply)(&next.filter())?;
        if next != state.0 {
            tracing::info!(filter = %next.filter(), "log levels changed");
        }
        state.0 = next;
        Ok(view_of(&state.0, &state.1))
    }
}

fn view_of(now: &LogLevels, at_start: &LogLevels) -> LogView {
    let mut modules: Vec<ModuleLevel> = MODULES
        .iter()
        .map(|(name, target, about)| ModuleLevel {
            name: (*name).to_owned(),
            target: (*target).to_owned(),
            level: now.effective(target),
            own: now.own(target).is_some(),
            about: (*about).to_owned(),
        })
        .collect();
    for (target, level) in &now.modules {
        if !MODULES.iter().any(|(_, t, _)| t == target) {
            modules.push(ModuleLevel {
                name: target.clone(),
                target: target.clone(),
                level: *level,
                own: true,
                about: String::new(),
            });
        }
    }
    LogView {
        default: now.default,
        modules,
        filter: now.filter(),
        at_start: at_start.filter(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_setting_is_read_into_levels_and_written_back() {
        let (l, warning) = LogLevels::from_setting(Some("warn,vringswitch_ports=debug"));
        assert!(warning.is_none());
        assert_eq!(l.default, Level::Warn);
        assert_eq!(l.filter(), "warn,vringswitch_ports=debug,virtio_queue=off");
        assert_eq!(l.effective("vringswitch_ports::tap"), Level::Debug);
        assert_eq!(l.effective("vringswitch_switch::worker"), Level::Warn);
        assert_eq!(l.effective("virtio_queue::chain"), Level::Off);
        // Named, virtio-queue keeps the level given.
        let (l, _) = LogLevels::from_setting(Some("info,virtio_queue=error"));
        assert_eq!(l.filter(), "info,virtio_queue=error");
        // A span filter is kept as given.
        let (l, _) = LogLevels::from_setting(Some("debug,[conn]=trace"));
        assert_eq!(l.filter(), "debug,virtio_queue=off,[conn]=trace");
        // Nothing given: info.
        assert_eq!(
            LogLevels::from_setting(None).0.filter(),
            "info,virtio_queue=off"
        );
    }

    #[test]
    fn a_setting_without_a_general_level_gets_info_and_a_warning() {
        let (l, warning) = LogLevels::from_setting(Some("verbose"));
        assert_eq!(l.filter(), "info,verbose=trace,virtio_queue=off");
        assert!(warning
            .unwrap()
            .contains("VRINGSWITCH_LOG=\"verbose\" gives no level"));
        let (l, warning) = LogLevels::from_setting(Some("vringswitch_ports=debug"));
        assert_eq!(l.default, Level::Info);
        assert!(warning.is_some());
    }

    #[test]
    fn a_setting_that_does_not_parse_is_replaced_by_info() {
        let (levels, filter, warning) = at_start(Some("info,x=["));
        assert_eq!(levels.filter(), "info,virtio_queue=off");
        assert_eq!(filter.to_string().split(',').count(), 2, "{filter}");
        assert!(warning.unwrap().contains("is not a log filter"));
        for ok in ["debug", "WARN", "vringswitch_ports=trace,info"] {
            assert!(at_start(Some(ok)).2.is_none(), "{ok}");
        }
    }

    #[test]
    fn the_longest_module_decides() {
        let mut l = LogLevels::from_setting(Some("info")).0;
        l.set_module("vringswitch_ports", Some(Level::Warn));
        l.set_module("vringswitch_ports::vhost_user", Some(Level::Trace));
        assert_eq!(
            l.effective("vringswitch_ports::vhost_user::relay"),
            Level::Trace
        );
        assert_eq!(l.effective("vringswitch_ports::tap"), Level::Warn);
        l.set_module("vringswitch_ports::vhost_user", None);
        assert_eq!(
            l.effective("vringswitch_ports::vhost_user::relay"),
            Level::Warn
        );
    }

    #[test]
    fn module_names_are_short_names_or_module_paths() {
        assert_eq!(
            target_of("vhost_user").unwrap(),
            "vringswitch_ports::vhost_user"
        );
        assert_eq!(
            target_of("vringswitch_switch::worker").unwrap(),
            "vringswitch_switch::worker"
        );
        assert_eq!(target_of("hyper::proto").unwrap(), "hyper::proto");
        for bad in [
            "verbose",
            "",
            "a::",
            "x y",
            "ports=debug",
            "vringswitch::[x]",
        ] {
            assert!(target_of(bad).is_err(), "{bad}");
        }
        assert!(target_of("portz")
            .unwrap_err()
            .contains("one of daemon, control"));
    }

    #[test]
    fn a_change_applies_whole_or_not_at_all_and_a_reset_restores_the_start() {
        let applied = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = applied.clone();
        let control = LogControl::new(
            LogLevels::from_setting(Some("info")).0,
            Box::new(move |f: &str| {
                seen.lock().unwrap().push(f.to_owned());
                Ok(())
            }),
        );
        let mut patch = LogPatch {
            default: Some(Level::Warn),
            ..LogPatch::default()
        };
        patch.modules.insert("ports".into(), Some(Level::Debug));
        let v = control.change(&patch).unwrap();
        assert_eq!(v.filter, "warn,virtio_queue=off,vringswitch_ports=debug");
        let tap = v.modules.iter().find(|m| m.name == "tap").unwrap();
        assert_eq!((tap.level, tap.own), (Level::Debug, false));
        let ports = v.modules.iter().find(|m| m.name == "ports").unwrap();
        assert_eq!((ports.level, ports.own), (Level::Debug, true));
        // An unknown module: nothing changes, nothing is applied.
        let mut bad = LogPatch::default();
        bad.modules.insert("verbose".into(), Some(Level::Debug));
        bad.modules.insert("switch".into(), Some(Level::Trace));
        assert!(control.change(&bad).is_err());
        assert_eq!(control.view().filter, v.filter);
        assert_eq!(applied.lock().unwrap().len(), 1);
        // A module path of its own is listed too.
        let mut own = LogPatch::default();
        own.modules
            .insert("vringswitch_switch::worker".into(), Some(Level::Trace));
        let v = control.change(&own).unwrap();
        assert!(v
            .modules
            .iter()
            .any(|m| m.name == "vringswitch_switch::worker" && m.own));
        let v = control
            .change(&LogPatch {
                reset: true,
                ..LogPatch::default()
            })
            .unwrap();
        assert_eq!(v.filter, "info,virtio_queue=off");
        assert_eq!(v.at_start, "info,virtio_queue=off");
    }

    #[test]
    fn a_filter_the_subscriber_refuses_changes_nothing() {
        let control = LogControl::new(
            LogLevels::from_setting(Some("info")).0,
            Box::new(|_: &str| Err("no".to_owned())),
        );
        let patch = LogPatch {
            default: Some(Level::Debug),
            ..LogPatch::default()
        };
        assert_eq!(control.change(&patch).unwrap_err(), "no");
        assert_eq!(control.view().default, Level::Info);
    }
}
