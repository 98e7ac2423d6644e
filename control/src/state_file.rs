//! The state file: the topology as the API last left it, written atomically and read back
//! at start, where it wins over the configuration file's bridges and ports.
//!
//! Also what an operator needs to see that: which bridges and ports of the configuration a
//! state file makes unused ([`ignored_config`]), and the configuration that will actually
//! run ([`to_config`], for `--print-config --state`).

use std::path::{Path, PathBuf};

use toml::Spanned;
use vringswitch_config::{BridgeConfig, Config};

use crate::errors::DaemonError;
use crate::schema::{BridgeSpec, SavedState, STATE_VERSION};

/// The topology a configuration describes, as the state file would record it.
pub fn from_config(config: &Config) -> SavedState {
    SavedState {
        version: STATE_VERSION,
        bridges: config
            .bridges
            .iter()
            .map(|b| BridgeSpec {
                name: b.name.get_ref().clone(),
                fdb_aging_s: *b.fdb_aging_s.get_ref(),
                fdb_max_learned: *b.fdb_max_learned.get_ref(),
                external_ids: b.external_ids.clone(),
            })
            .collect(),
        ports: config
            .ports
            .iter()
            // As the port runs (defaults filled in): what the state file holds of it too.
            // The configuration was checked, so this does not fail; if it did, the port's
            // start would say why.
            .map(|spec| spec.clone().normalized().unwrap_or_else(|_| spec.clone()))
            .collect(),
        static_macs: Vec::new(),
        mirrors: config.mirrors.clone(),
        security_groups: config.security_groups.clone(),
    }
}

/// The configuration that runs with `saved` restored: the configuration's socket directory
/// and `dataplane` (which the state file does not hold) with the state's bridges and ports.
pub fn to_config(config: &Config, saved: &SavedState) -> Config {
    let at = |v| Spanned::new(0..0, v);
    Config::new(
        config.socket_dir.clone(),
        config.dataplane.clone(),
        saved
            .bridges
            .iter()
            .map(|b| BridgeConfig {
                name: at(b.name.clone()),
                fdb_aging_s: Spanned::new(0..0, b.fdb_aging_s),
                fdb_max_learned: Spanned::new(0..0, b.fdb_max_learned),
                external_ids: b.external_ids.clone(),
            })
            .collect(),
        saved.ports.clone(),
    )
    .with_mirrors(saved.mirrors.clone())
    .with_security_groups(saved.security_groups.clone())
}

/// What of the configuration's topology (`config`, as [`from_config`] gives it) goes
/// unused because `state` is restored instead: bridges and ports only in the configuration,
/// or set otherwise there. None when the state has everything as the configuration says.
pub fn ignored_config(config: &SavedState, state: &SavedState) -> Option<String> {
    let mut ignored = Vec::new();
    for b in &config.bridges {
        match state.bridges.iter().find(|s| s.name == b.name) {
            None => ignored.push(format!("bridge {} (not in the state file)", b.name)),
            Some(s) if s != b => {
                let mut differ = Vec::new();
                if s.fdb_aging_s != b.fdb_aging_s {
                    differ.push(format!(
                        "fdb_aging_s {} in the configuration, {} in the state file",
                        b.fdb_aging_s, s.fdb_aging_s
                    ));
                }
                if s.fdb_max_learned != b.fdb_max_learned {
                    differ.push(format!(
                        "fdb_max_learned {} in the configuration, {} in the state file",
                        b.fdb_max_learned, s.fdb_max_learned
                    ));
                }
                if s.external_ids != b.external_ids {
                    differ.push("external_ids set otherwise in the state file".to_owned());
                }
                ignored.push(format!("bridge {} ({})", b.name, differ.join("; ")));
            }
            Some(_) => {}
        }
    }
    for p in &config.ports {
        match state.ports.iter().find(|s| s.name == p.name) {
            None => ignored.push(format!("port {} (not in the state file)", p.name)),
            Some(s) => {
                let fields = p.differences(s);
                if !fields.is_empty() {
                    ignored.push(format!(
                        "port {} ({} set otherwise in the state file)",
                        p.name,
                        fields.join(", ")
                    ));
                }
            }
        }
    }
    for m in &config.mirrors {
        match state.mirrors.iter().find(|s| s.name == m.name) {
            None => ignored.push(format!("mirror {} (not in the state file)", m.name)),
            Some(s) if s != m => ignored.push(format!(
                "mirror {} (set otherwise in the state file)",
                m.name
            )),
            Some(_) => {}
        }
    }
    (!ignored.is_empty()).then(|| ignored.join("; "))
}

/// Reads the state file; `None` if there is none yet.
pub fn load(path: &Path) -> Result<Option<SavedState>, DaemonError> {
    let refuse = |message: &str| DaemonError::State {
        path: path.to_path_buf(),
        message: message.to_owned(),
    };
    // Looked at before it is opened: a FIFO would block the start, a symbolic link would
    // have every save replace the link (or write where it points).
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(refuse(
                "is a symbolic link; give the path of the file itself",
            ))
        }
        Ok(m) if !m.is_file() => return Err(refuse("is not a regular file")),
        _ => {}
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(DaemonError::State {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        }
    };
    let saved: SavedState = serde_json::from_str(&text).map_err(|e| DaemonError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if saved.version != STATE_VERSION {
        return Err(DaemonError::State {
            path: path.to_path_buf(),
            message: format!(
                "version {} is not the {STATE_VERSION} this daemon understands",
                saved.version
            ),
        });
    }
    Ok(Some(saved))
}

/// Writes `state` as JSON to `path` so that a crash at any point leaves either the old
/// file or the new one: temporary file in the same directory, fsync, rename, fsync of the
/// directory.
///
/// The temporary file is made new (`O_EXCL`, `O_NOFOLLOW`) after removing whatever was at
/// its path: a symbolic link planted there is removed, never written through. A failed
/// write (a full disk) removes it again.
pub fn write_atomically(path: &Path, state: &SavedState) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is a symbolic link; give the path of the file itself",
        ));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    let mut text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    text.push(b'\n');
    let written = f
        .write_all(&text)
        .and_then(|()| f.sync_all())
        .and_then(|()| {
            drop(f);
            std::fs::rename(&tmp, path)
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{PortSpec, StaticMac, VlanConfig};
    use vringswitch_config::{KindSpec, SocketMode, VhostUserSettings};

    #[test]
    fn symlinks_and_fifos_are_refused_and_never_written_through() {
        let dir = std::env::temp_dir().join(format!("vs-state-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("precious");
        std::fs::write(&target, "keep").unwrap();
        let state = topology(&[("br0", 60)], vec![]);
        // A symlink planted at the temporary path: removed, the target untouched.
        let path = dir.join("state.json");
        std::os::unix::fs::symlink(&target, dir.join("state.json.tmp")).unwrap();
        write_atomically(&path, &state).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(load(&path).unwrap(), Some(state.clone()));
        assert!(!dir.join("state.json.tmp").exists());
        // A symlinked state path: refused on load and on save.
        let linked = dir.join("linked.json");
        std::os::unix::fs::symlink(&target, &linked).unwrap();
        let e = load(&linked).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(write_atomically(&linked, &state).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        // A FIFO: refused at once instead of blocking.
        let fifo = dir.join("fifo.json");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mkfifo");
        let e = load(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_files_are_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("vs-state-{}", std::process::id()));
        let path = dir.join("sub/state.json");
        assert_eq!(load(&path).unwrap(), None);
        let state = SavedState {
            version: STATE_VERSION,
            bridges: vec![BridgeSpec {
                name: "br0".into(),
                fdb_aging_s: 60,
                fdb_max_learned: 100,
                external_ids: [("owner".to_owned(), "ops".to_owned())].into(),
            }],
            ports: vec![PortSpec {
                name: "p".into(),
                bridge: "br0".into(),
                kind: KindSpec::VhostUser(VhostUserSettings {
                    socket: "/run/x.sock".into(),
                    mode: Some(SocketMode::Client),
                    queues: Some(2),
                    offloads: Some(false),
                }),
                vlan: Some(VlanConfig::Trunk { tags: vec![5, 6] }),
                allowed_macs: Some(vec!["02:00:00:00:00:01".into()]),
                allowed_ips: Some(vec!["10.0.0.5/32".into()]),
                security_groups: Some(vec!["web".into()]),
                fdb_max_learned: Some(5),
                police_rx: Some(vringswitch_config::PoliceConfig {
                    rate_kbps: Some(10_000),
                    burst_kb: None,
                    rate_pps: Some(1000),
                    burst_packets: Some(100),
                }),
                police_tx: None,
                admin: crate::schema::AdminState::Down,
                external_ids: [("iface-id".to_owned(), "5f1e".to_owned())].into(),
            }],
            static_macs: vec![StaticMac {
                bridge: "br0".into(),
                mac: "02:00:00:00:00:01".into(),
                vlan: 5,
                port: "p".into(),
            }],
            mirrors: vec![vringswitch_config::MirrorSpec {
                name: "span".into(),
                ports: vec!["p".into()],
                direction: vringswitch_config::MirrorDirection::Rx,
                output: "ids".into(),
            }],
            security_groups: vec![serde_json::from_str(
                r#"{"name": "web", "stateful": false, "rules": [{"direction": "ingress",
                    "protocol": "tcp", "port_range_min": 22, "remote_group": "web"}]}"#,
            )
            .unwrap()],
        };
        write_atomically(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), Some(state.clone()));
        assert!(!dir.join("sub/state.json.tmp").exists());
        std::fs::write(&path, "{ not json").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("remove it"), "{e}");
        let mut future = state;
        future.version = 9;
        write_atomically(&path, &future).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("version 9"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn port(name: &str, queues: u16) -> PortSpec {
        let settings = VhostUserSettings {
            socket: format!("/run/vringswitch/{name}.sock").into(),
            mode: Some(SocketMode::Server),
            queues: Some(queues),
            offloads: None,
        };
        PortSpec::new(name, "br0", KindSpec::VhostUser(settings))
    }

    fn topology(bridges: &[(&str, u64)], ports: Vec<PortSpec>) -> SavedState {
        SavedState {
            version: STATE_VERSION,
            bridges: bridges
                .iter()
                .map(|&(n, a)| BridgeSpec {
                    name: n.into(),
                    fdb_aging_s: a,
                    fdb_max_learned: vringswitch_config::DEFAULT_BRIDGE_MAX_LEARNED,
                    external_ids: Default::default(),
                })
                .collect(),
            ports,
            static_macs: vec![],
            mirrors: vec![],
            security_groups: vec![],
        }
    }

    #[test]
    fn what_the_state_file_leaves_unused_is_named() {
        let state = topology(&[("br0", 300)], vec![port("vm1", 4), port("api", 1)]);
        // The same topology (and a port added over the API since): nothing unused.
        assert_eq!(
            ignored_config(&topology(&[("br0", 300)], vec![port("vm1", 4)]), &state),
            None
        );
        let mut moved = port("vm1", 2);
        moved.vlan = Some(VlanConfig::Access { tag: 5 });
        let config = topology(&[("br0", 60), ("br1", 300)], vec![moved, port("vm3", 4)]);
        assert_eq!(
            ignored_config(&config, &state).unwrap(),
            "bridge br0 (fdb_aging_s 60 in the configuration, 300 in the state file); \
             bridge br1 (not in the state file); \
             port vm1 (queues, vlan set otherwise in the state file); \
             port vm3 (not in the state file)"
        );
    }

    #[test]
    fn the_configuration_in_effect_is_the_states_topology_round_trip() {
        let mut p = port("vm1", 2);
        p.vlan = Some(VlanConfig::Trunk { tags: vec![5, 6] });
        p.allowed_macs = Some(vec!["02:00:00:00:00:01".into()]);
        let state = topology(&[("br0", 60)], vec![p]);
        let config = to_config(&Config::builtin(Path::new("/run/x")), &state);
        let text = vringswitch_config::to_toml(&config).unwrap();
        let back = Config::parse(&text, Path::new("in-effect.toml")).unwrap();
        assert_eq!(from_config(&back), state);
    }
}
