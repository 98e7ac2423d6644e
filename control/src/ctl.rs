//! What `vringctl` prints: aligned tables for people (`--json` prints the API's JSON instead).

use comfy_table::presets::NOTHING;
use comfy_table::{CellAlignment, Table};
use vringswitch_metrics::Snapshot;

/// An aligned table without borders; numeric columns (all but the first `text_cols`) are
/// right-aligned.
fn table(header: &[&str], text_cols: usize, rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.iter().map(|h| h.to_uppercase()));
    for r in rows {
        t.add_row(r);
    }
    for (i, col) in t.column_iter_mut().enumerate() {
        if i >= text_cols {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    // Lines without trailing blanks, starting at the first column.
    t.to_string()
        .lines()
        .map(|l| l.trim_end().strip_prefix(' ').unwrap_or(l.trim_end()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

/// The per-core and per-port tables of `vringctl stats`. `s` holds either counts since start
/// or the difference over an interval, as `scope` says.
pub fn stats_tables(s: &Snapshot, scope: &str) -> String {
    let cores = s
        .workers
        .iter()
        .map(|w| {
            vec![
                w.core.to_string(),
                opt(w.busy_ratio().map(|r| r * 100.0), 1),
                opt(w.cycles_per_packet(), 0),
                w.packets.to_string(),
                opt(w.average_burst(), 1),
                w.wakeups.to_string(),
            ]
        })
        .collect();
    let ports = s
        .ports
        .iter()
        .map(|p| {
            let reasons: Vec<String> = p
                .drops
                .iter()
                .filter(|(_, &n)| n > 0)
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            vec![
                p.name.clone(),
                p.bridge.clone(),
                if p.connected { "up" } else { "down" }.to_owned(),
                p.rx_packets.to_string(),
                p.rx_bytes.to_string(),
                p.tx_packets.to_string(),
                p.tx_bytes.to_string(),
                p.total_drops().to_string(),
                reasons.join(","),
            ]
        })
        .collect();
    format!(
        "Cores ({scope}; cycles at {:.2} GHz)\n{}\n\nPorts ({scope}; rx = from the VM, tx = to the VM)\n{}\n",
        s.cycles_per_second as f64 / 1e9,
        table(
            &["core", "busy %", "cycles/pkt", "packets", "avg burst", "wakeups"],
            1,
            cores
        ),
        table(
            &[
                "port",
                "bridge",
                "link",
                "rx packets",
                "rx bytes",
                "tx packets",
                "tx bytes",
                "drops",
                "drop reasons"
            ],
            3,
            ports
        ),
    )
}

/// `vringctl cores`: each worker core, its load, and the ingress queues it polls with the
/// share of the core each takes (as `ovs-appctl dpif-netdev/pmd-rxq-show`). `s` holds counts
/// since start or over an interval, as `scope` says.
pub fn cores_text(s: &Snapshot, scope: &str) -> String {
    let mut out = format!("Cores ({scope})\n");
    for w in &s.workers {
        // No cycles counted: the worker slept throughout (a sleep is counted when it ends).
        let all = w.busy_cycles + w.idle_cycles;
        let share = |cycles: u64| Some(cycles as f64 * 100.0 / all.max(1) as f64);
        let rows: Vec<Vec<String>> = s
            .ports
            .iter()
            .flat_map(|p| {
                p.queues
                    .iter()
                    .enumerate()
                    .filter(|(_, q)| q.core == Some(w.core))
                    .map(|(i, q)| {
                        vec![
                            p.name.clone(),
                            i.to_string(),
                            opt(share(q.busy_cycles), 1),
                            q.rx_packets.to_string(),
                        ]
                    })
            })
            .collect();
        out.push_str(&format!(
            "\ncore {}: busy {} %, {} packets, {} queue{}\n",
            w.core,
            opt(share(w.busy_cycles), 1),
            w.packets,
            rows.len(),
            if rows.len() == 1 { "" } else { "s" }
        ));
        if !rows.is_empty() {
            out.push_str(&table(&["port", "queue", "busy %", "rx packets"], 2, rows));
            out.push('\n');
        }
    }
    out
}

/// `vringctl trace`: the decision step by step, then each port offered the frame.
pub fn trace_text(t: &serde_json::Value) -> String {
    let mut out = format!("frame from {}\n", text(&t["port"]));
    if let Some(vlan) = t["vlan"].as_u64() {
        out.push_str(&format!("  vlan: {vlan}\n"));
    }
    if t["learning"].is_string() {
        let learning = match (t["learning"].as_str(), t["learning_from"].as_str()) {
            (Some("moved"), Some(from)) => format!("moved from {from}"),
            (Some(l), _) => l.replace('_', " "),
            _ => "-".to_owned(),
        };
        out.push_str(&format!("  source: {learning}\n"));
    }
    let lookup = match t["lookup"].as_str() {
        Some("found") => format!(
            "found on {}{}",
            text(&t["found_port"]),
            if t["found_static"] == true {
                " (static)"
            } else {
                ""
            }
        ),
        Some(l) => l.replace('_', " "),
        None => "-".to_owned(),
    };
    out.push_str(&format!("  destination: {lookup}\n"));
    let rows: Vec<Vec<String>> = t["outputs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            vec![
                text(&o["port"]),
                text(&o["action"]).replace('_', " "),
                match (o["action"].as_str(), o["tag"].as_u64()) {
                    (Some("deliver"), Some(t)) => format!("tagged {t}"),
                    (Some("deliver"), None) => "untagged".to_owned(),
                    _ => "-".to_owned(),
                },
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(&["port", "action", "vlan"], 3, rows));
        out.push('\n');
    }
    out.push_str(&format!("\n{}\n", text(&t["summary"])));
    out
}

/// A JSON field as table text: strings bare, null as "-".
fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A port's VLAN setting in a few words: "-", "access 10", "trunk 10,20".
pub fn vlan_text(vlan: &serde_json::Value) -> String {
    match vlan["mode"].as_str() {
        Some("access") => format!("access {}", text(&vlan["tag"])),
        Some("trunk") => {
            let tags: Vec<String> = vlan["tags"]
                .as_array()
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default();
            format!("trunk {}", tags.join(","))
        }
        _ => "-".to_owned(),
    }
}

/// `vringctl bridge list`: one line per bridge (`bridges` is the API's list).
pub fn bridges_table(bridges: &serde_json::Value) -> String {
    let rows = bridges
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let ports: Vec<String> = b["ports"]
                .as_array()
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default();
            vec![
                text(&b["name"]),
                text(&b["fdb_aging_s"]),
                text(&b["fdb_max_learned"]),
                ports.join(","),
            ]
        })
        .collect();
    table(&["bridge", "fdb aging s", "max learned", "ports"], 1, rows) + "\n"
}

/// A port's mode column: a vhost-user port's socket mode, else its kind (the port's own
/// words, `words` in the API's view).
fn mode_text(p: &serde_json::Value) -> String {
    text(&p["words"]["mode"])
}

/// What a port is attached to: a vhost-user port's socket, a TAP port's interface, an
/// AF_XDP port's interface and queue.
fn attached_to(p: &serde_json::Value) -> String {
    text(&p["words"]["attached_to"])
}

/// Whether the port's queue pairs are its own to show (a VM's).
fn own_queues(p: &serde_json::Value) -> bool {
    p["words"]["own_queues"] == true
}

/// The port's kind and mode as its tree line starts: `vhost-user server`, `tap`.
fn kind_text(p: &serde_json::Value) -> String {
    let (kind, mode) = (text(&p["type"]), mode_text(p));
    if kind == mode {
        kind
    } else {
        format!("{kind} {mode}")
    }
}

/// `vringctl port list`: one line per port with its live state and main counters.
pub fn ports_table(ports: &serde_json::Value) -> String {
    let rows = ports
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let st = &p["state"];
            let link = link(p);
            let c = &p["counters"];
            let drops: u64 = c["drops"]
                .as_object()
                .map(|d| d.values().filter_map(|v| v.as_u64()).sum())
                .unwrap_or(0);
            vec![
                text(&p["name"]),
                text(&p["bridge"]),
                mode_text(p),
                vlan_text(&p["vlan"]),
                link.to_owned(),
                attached_to(p),
                text(&st["queue_pairs_active"]),
                text(&c["rx_packets"]),
                text(&c["tx_packets"]),
                drops.to_string(),
                format!(
                    "{}/{}",
                    text(&c["fdb_learned"]),
                    text(&p["fdb_max_learned"])
                ),
            ]
        })
        .collect();
    table(
        &[
            "port",
            "bridge",
            "mode",
            "vlan",
            "link",
            "socket",
            "queues",
            "rx packets",
            "tx packets",
            "drops",
            "macs learnt",
        ],
        6,
        rows,
    ) + "\n"
}

/// A port's link in one word.
/// `, core 1` or `, cores 0,1`: which cores poll the port (nothing while it is down).
fn cores_of(port: &serde_json::Value) -> String {
    let cores: Vec<String> = port["cores"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    match cores.len() {
        0 => String::new(),
        1 => format!(", core {}", cores[0]),
        _ => format!(", cores {}", cores.join(",")),
    }
}

fn link(port: &serde_json::Value) -> &'static str {
    if port["admin"] == "down" {
        return "admin down";
    }
    let st = &port["state"];
    match (st["connected"].as_bool(), st["ready"].as_bool()) {
        (Some(true), Some(true)) => "up",
        (Some(true), _) => "connecting",
        _ => "down",
    }
}

/// The negotiated features of a port (`0x...` in the API) by name; unknown bits by number.
pub fn feature_names(hex: &str) -> String {
    match u64::from_str_radix(hex.trim_start_matches("0x"), 16) {
        Ok(bits) => vringswitch_ports::vhost_user::backend::feature_names(bits, " "),
        Err(_) => "-".to_owned(),
    }
}

/// `vringctl show`: the whole switch as a tree, bridges and their ports, like
/// `ovs-vsctl show`.
pub fn show_tree(
    bridges: &serde_json::Value,
    ports: &serde_json::Value,
    mirrors: &serde_json::Value,
) -> String {
    let ports = ports.as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    for b in bridges.as_array().into_iter().flatten() {
        let name = text(&b["name"]);
        out.push_str(&format!(
            "bridge {name} (fdb ageing {} s, learns at most {})\n",
            text(&b["fdb_aging_s"]),
            text(&b["fdb_max_learned"])
        ));
        if let Some(ids) = external_ids_text(b) {
            out.push_str(&format!("    external_ids {ids}\n"));
        }
        let mine: Vec<&serde_json::Value> = ports
            .iter()
            .filter(|p| text(&p["bridge"]) == name)
            .collect();
        if mine.is_empty() {
            out.push_str("    no ports\n");
        }
        for p in &mine {
            let queues = if own_queues(p) {
                format!(
                    "queues {} of {}, ",
                    text(&p["state"]["queue_pairs_active"]),
                    text(&p["queues"])
                )
            } else {
                String::new()
            };
            out.push_str(&format!(
                "    port {}: {}, link {}, {queues}vlan {}{}\n        {}\n",
                text(&p["name"]),
                kind_text(p),
                link(p),
                vlan_text(&p["vlan"]),
                cores_of(p),
                text(&p["words"]["detail"]),
            ));
            if let Some(ids) = external_ids_text(p) {
                out.push_str(&format!("        external_ids {ids}\n"));
            }
        }
        let names: Vec<String> = mine.iter().map(|p| text(&p["name"])).collect();
        for m in mirrors
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| names.contains(&text(&m["output"])))
        {
            out.push_str(&format!("    mirror {}\n", mirror_text(m)));
        }
    }
    out
}

/// A mirror in a few words: `span: vm1,vm2 both -> ids`.
fn mirror_text(m: &serde_json::Value) -> String {
    let ports: Vec<String> = m["ports"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    format!(
        "{}: {} {} -> {}",
        text(&m["name"]),
        ports.join(","),
        text(&m["direction"]),
        text(&m["output"])
    )
}

/// `vringctl mirror list`: one line per mirror.
pub fn mirrors_table(mirrors: &serde_json::Value) -> String {
    let rows = mirrors
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let ports: Vec<String> = m["ports"]
                .as_array()
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default();
            vec![
                text(&m["name"]),
                ports.join(","),
                text(&m["direction"]),
                text(&m["output"]),
            ]
        })
        .collect();
    table(&["mirror", "ports", "direction", "output"], 4, rows) + "\n"
}

/// `vringctl sg list`: one line per security group, with the ports in it.
pub fn groups_table(groups: &serde_json::Value, ports: &serde_json::Value) -> String {
    let rows = groups
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let name = text(&g["name"]);
            let members: Vec<String> = ports
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| {
                    p["security_groups"]
                        .as_array()
                        .is_some_and(|gs| gs.iter().any(|x| x.as_str() == Some(name.as_str())))
                })
                .map(|p| text(&p["name"]))
                .collect();
            vec![
                name,
                if g["stateful"] == serde_json::Value::Bool(false) {
                    "stateless".to_owned()
                } else {
                    "stateful".to_owned()
                },
                g["rules"].as_array().map_or(0, Vec::len).to_string(),
                if members.is_empty() {
                    "-".to_owned()
                } else {
                    members.join(",")
                },
            ]
        })
        .collect();
    table(&["group", "kind", "rules", "ports"], 4, rows) + "\n"
}

/// One rule's transport in words: `tcp 22`, `udp 5000-5010`, `icmp type 8`, `any`.
fn rule_transport(r: &serde_json::Value) -> String {
    let proto = match &r["protocol"] {
        serde_json::Value::Null => return "any".to_owned(),
        p => text(p),
    };
    let icmp = matches!(proto.as_str(), "icmp" | "icmpv6" | "ipv6-icmp" | "1" | "58");
    match (r["port_range_min"].as_u64(), r["port_range_max"].as_u64()) {
        (None, None) => proto,
        (Some(t), None) if icmp => format!("{proto} type {t}"),
        (Some(t), Some(c)) if icmp => format!("{proto} type {t} code {c}"),
        (lo, hi) => {
            let (lo, hi) = (lo.unwrap_or(1), hi.or(lo).unwrap_or(65535));
            if lo == hi {
                format!("{proto} {lo}")
            } else {
                format!("{proto} {lo}-{hi}")
            }
        }
    }
}

/// `vringctl sg show`: a group's rules, numbered as `sg rule-del` takes them.
pub fn rules_table(g: &serde_json::Value) -> String {
    let rows: Vec<Vec<String>> = g["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            let remote = match (&r["remote_ip_prefix"], &r["remote_group"]) {
                (serde_json::Value::String(p), _) => p.clone(),
                (_, serde_json::Value::String(g)) => format!("group {g}"),
                _ => "any".to_owned(),
            };
            vec![
                (i + 1).to_string(),
                text(&r["direction"]),
                r["ethertype"].as_str().unwrap_or("IPv4").to_owned(),
                rule_transport(r),
                remote,
            ]
        })
        .collect();
    let kind = if g["stateful"] == serde_json::Value::Bool(false) {
        "stateless"
    } else {
        "stateful"
    };
    let head = format!("security group {} ({kind})\n", text(&g["name"]));
    if rows.is_empty() {
        return head + "no rules: it allows nothing\n";
    }
    head + &table(
        &["#", "direction", "ethertype", "protocol", "remote"],
        5,
        rows,
    ) + "\n"
}

/// `vringctl conntrack`: one line per connection, as conntrack -L.
pub fn connections_table(v: &serde_json::Value) -> String {
    let conns = v["connections"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = conns
        .iter()
        .map(|c| {
            let end = |a: &serde_json::Value, p: &serde_json::Value| {
                let a = text(a);
                if a.contains(':') {
                    format!("[{a}]:{}", text(p))
                } else {
                    format!("{a}:{}", text(p))
                }
            };
            vec![
                text(&c["protocol"]),
                end(&c["src"], &c["sport"]),
                end(&c["dst"], &c["dport"]),
                text(&c["state"]),
                format!("{} s", text(&c["expires_in_s"])),
                text(&c["port"]),
                format!("{}/{}", text(&c["bridge"]), text(&c["vlan"])),
            ]
        })
        .collect();
    let total = v["total"].as_u64().unwrap_or(0);
    let shown = rows.len();
    let mut out = table(
        &[
            "proto",
            "from",
            "to",
            "state",
            "expires",
            "port",
            "bridge/vlan",
        ],
        7,
        rows,
    ) + "\n";
    if (shown as u64) < total {
        out += &format!("{shown} of {total} connections shown (--limit shows more)\n");
    }
    out
}

/// A bridge's or port's external IDs as `key=value` pairs (values with spaces quoted), or
/// `None` without any.
pub fn external_ids_text(v: &serde_json::Value) -> Option<String> {
    let ids = v["external_ids"].as_object().filter(|o| !o.is_empty())?;
    Some(
        ids.iter()
            .map(|(k, v)| {
                let v = v.as_str().unwrap_or_default();
                if v.is_empty() || v.contains([' ', '"', '=']) {
                    format!("{k}={v:?}")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// `vringctl bridge show`: the bridge's line of the table, and its external IDs.
pub fn bridge_detail(bridge: &serde_json::Value) -> String {
    let mut out = bridges_table(&serde_json::Value::Array(vec![bridge.clone()]));
    if let Some(ids) = external_ids_text(bridge) {
        out.push_str(&format!("external_ids {ids}\n"));
    }
    out
}

/// A port's offload line: offered or not, and what the switch did with the frames that
/// came to it asking for one.
fn offloads_text(port: &serde_json::Value) -> String {
    let offered = match port["offloads"].as_bool() {
        Some(true) => "on",
        Some(false) => "off",
        None => return String::new(),
    };
    let c = &port["counters"]["offloads"];
    format!(
        "offloads: {offered}; frames passed {}, checksummed {}, segmented {}\n",
        c["passed"].as_u64().unwrap_or(0),
        c["checksummed"].as_u64().unwrap_or(0),
        c["segmented"].as_u64().unwrap_or(0),
    )
}

/// `vringctl port show`: the port's line, its queues and negotiated features, then one
/// line per queue pair.
pub fn port_detail(port: &serde_json::Value) -> String {
    let mut out = ports_table(&serde_json::Value::Array(vec![port.clone()]));
    if !own_queues(port) {
        out.push_str(&format!("\n{}\n", text(&port["words"]["detail"])));
    } else {
        out.push_str(&format!(
            "\nqueue pairs: {} active of {} configured\nfeatures: {}\n",
            text(&port["state"]["queue_pairs_active"]),
            text(&port["queues"]),
            port["state"]["features"]
                .as_str()
                .map_or_else(|| "- (no frontend)".to_owned(), feature_names),
        ));
    }
    out.push_str(&offloads_text(port));
    if let Some(ids) = external_ids_text(port) {
        out.push_str(&format!("external_ids {ids}\n"));
    }
    let rows: Vec<Vec<String>> = port["counters"]["queues"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, q)| {
            vec![
                i.to_string(),
                text(&q["rx_packets"]),
                text(&q["tx_packets"]),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out += &table(&["queue pair", "rx packets", "tx packets"], 0, rows);
        out.push('\n');
    }
    if let Some(e) = port["evpn"].as_object() {
        out.push_str(&evpn_line(e));
    }
    if let Some(remotes) = port["remotes"].as_array() {
        out.push('\n');
        out += &remotes_table(remotes);
        out.push('\n');
    }
    out
}

/// An EVPN tunnel port's control, in a line: `evpn: following (FRR running), 2 local
/// MACs advertised, routes: 4 remote MACs, flood to 10.0.0.2, 10.0.0.3`.
fn evpn_line(e: &serde_json::Map<String, serde_json::Value>) -> String {
    let state = e.get("state").and_then(|v| v.as_str()).unwrap_or("-");
    let frr = if e.get("frr_running") == Some(&serde_json::Value::Bool(true)) {
        "FRR running"
    } else {
        "FRR not running"
    };
    let error = e
        .get("error")
        .and_then(|v| v.as_str())
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let flood: Vec<&str> = e
        .get("flood")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect();
    let num = |k: &str| e.get(k).map_or_else(|| "-".to_owned(), text);
    format!(
        "evpn: {state} ({frr}){error}, {} local MACs advertised, routes: {} remote MACs, \
         flood to {}\n",
        num("advertised"),
        num("remote_macs"),
        if flood.is_empty() {
            "nobody".to_owned()
        } else {
            flood.join(", ")
        }
    )
}

/// A tunnel port's remote ends: one row each, its MAC addresses (`*`: installed by the
/// control plane) and counters.
fn remotes_table(remotes: &[serde_json::Value]) -> String {
    let rows: Vec<Vec<String>> = remotes
        .iter()
        .map(|r| {
            let macs: Vec<String> = r["macs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let star = if m["learnt"] == false { "*" } else { "" };
                    format!("{}{star}", text(&m["mac"]))
                })
                .collect();
            vec![
                text(&r["address"]),
                if macs.is_empty() {
                    "-".to_owned()
                } else {
                    macs.join(" ")
                },
                text(&r["rx_packets"]),
                text(&r["tx_packets"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "remote ends: none".to_owned();
    }
    table(&["remote end", "macs", "rx packets", "tx packets"], 2, rows)
}

/// `vringctl fdb show`: one line per entry.
pub fn fdb_table(entries: &serde_json::Value) -> String {
    let rows = entries
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                text(&e["mac"]),
                text(&e["port"]),
                if e["static"] == true {
                    "static"
                } else {
                    "learnt"
                }
                .to_owned(),
                text(&e["vlan"]),
                text(&e["age_s"]),
            ]
        })
        .collect();
    table(&["mac", "port", "type", "vlan", "age s"], 3, rows) + "\n"
}

/// `vringctl log show`: the general level, then each module's, marking those set on
/// their own.
pub fn log_table(v: &serde_json::Value) -> String {
    let rows = v["modules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            vec![
                text(&m["name"]),
                text(&m["level"]) + if m["own"] == true { " (own)" } else { "" },
                text(&m["about"]),
            ]
        })
        .collect();
    format!(
        "messages in general: {}\n\n{}\nfilter: {}\nat start: {}\n",
        text(&v["default"]),
        table(&["module", "level", "covers"], 3, rows),
        text(&v["filter"]),
        text(&v["at_start"])
    )
}

/// The counters accumulated between two snapshots (ports matched by name; a port that is new
/// in `later` counts from zero).
pub fn difference(later: &Snapshot, earlier: &Snapshot) -> Snapshot {
    let mut d = later.clone();
    for w in &mut d.workers {
        if let Some(e) = earlier.workers.iter().find(|e| e.core == w.core) {
            *w = w.since(e);
        }
    }
    for p in &mut d.ports {
        if let Some(e) = earlier.port(&p.name) {
            *p = p.since(e);
        }
    }
    d
}

/// What `vringctl upgrade` says of a successful upgrade (`POST /v1/upgrade`'s answer).
pub fn upgrade_text(v: &serde_json::Value) -> String {
    let mut out = format!(
        "upgraded: pid {} -> pid {} (vringswitch {}); forwarding paused {:.1} ms; {} port(s) \
         carried on\n",
        v["old_pid"],
        v["new_pid"],
        v["new_version"].as_str().unwrap_or("?"),
        v["paused_ms"].as_f64().unwrap_or(0.0),
        v["ports"]
    );
    for pair in v["not_carried"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  port {}: its VM reconnects: {}\n",
            pair[0].as_str().unwrap_or("?"),
            pair[1].as_str().unwrap_or("?")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vringswitch_metrics::{PortSnapshot, WorkerSnapshot};

    fn sample() -> Snapshot {
        Snapshot {
            cycles_per_second: 2_000_000_000,
            burst_bounds: vec![1, 2, 4, 8, 16, 32, 64],
            workers: vec![WorkerSnapshot {
                core: 1,
                busy_cycles: 3000,
                idle_cycles: 1000,
                packets: 10,
                wakeups: 2,
                bursts: vec![0, 0, 0, 1, 0, 0, 0],
            }],
            ports: vec![PortSnapshot {
                name: "vm1".into(),
                bridge: "br0".into(),
                connected: true,
                admin_down: false,
                ready: true,
                reconnects: 0,
                protocol_errors: 0,
                rx_packets: 10,
                rx_bytes: 640,
                tx_packets: 4,
                tx_bytes: 256,
                drops: [("hairpin".to_owned(), 0), ("no_rx_buffer".to_owned(), 6)]
                    .into_iter()
                    .collect(),
                queues: vec![],
                offloads: Default::default(),
                fdb_learned: 3,
                fdb_max_learned: 1024,
                remotes: vec![],
            }],
            bridges: vec![],
        }
    }

    #[test]
    fn cores_list_the_queues_each_polls_with_their_share() {
        use vringswitch_metrics::QueueSnapshot;
        let mut s = sample();
        s.workers.push(WorkerSnapshot {
            core: 3,
            busy_cycles: 1500,
            idle_cycles: 500,
            packets: 3,
            ..WorkerSnapshot::default()
        });
        s.ports[0].queues = vec![
            QueueSnapshot {
                rx_packets: 7,
                tx_packets: 0,
                busy_cycles: 2000,
                core: Some(1),
            },
            QueueSnapshot {
                rx_packets: 3,
                tx_packets: 0,
                busy_cycles: 1000,
                core: Some(3),
            },
        ];
        let out = cores_text(&s, "since start");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "Cores (since start)");
        assert_eq!(lines[2], "core 1: busy 75.0 %, 10 packets, 1 queue");
        // 2000 of core 1's 4000 cycles.
        assert_eq!(
            lines[4].split_whitespace().collect::<Vec<_>>(),
            ["vm1", "0", "50.0", "7"]
        );
        assert_eq!(lines[6], "core 3: busy 75.0 %, 3 packets, 1 queue");
        assert_eq!(
            lines[8].split_whitespace().collect::<Vec<_>>(),
            ["vm1", "1", "50.0", "3"]
        );
    }

    #[test]
    fn tables_show_derived_figures() {
        let out = stats_tables(&sample(), "since start");
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("Cores (since start; cycles at 2.00 GHz)"));
        let header: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(header[0], "CORE");
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        // busy 75 %, 300 cycles per packet, 10 packets, bursts of 10 on average, 2 wakeups.
        assert_eq!(row, ["1", "75.0", "300", "10", "10.0", "2"]);
        let port = out.lines().find(|l| l.starts_with("vm1")).unwrap();
        let cols: Vec<&str> = port.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "vm1",
                "br0",
                "up",
                "10",
                "640",
                "4",
                "256",
                "6",
                "no_rx_buffer=6"
            ]
        );
    }

    #[test]
    fn topology_tables_show_what_people_look_for() {
        use serde_json::json;
        let b = bridges_table(&json!([{"name": "br0", "fdb_aging_s": 300,
            "fdb_max_learned": 8192, "ports": ["a", "b"]}]));
        let row: Vec<&str> = b.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row, ["br0", "300", "8192", "a,b"]);
        let p = ports_table(&json!([{
            "name": "a", "bridge": "br0", "type": "vhost-user", "socket": "/run/a.sock",
            "mode": "server", "queues": 4, "vlan": {"mode": "trunk", "tags": [10, 20]},
            "words": {"mode": "server", "attached_to": "/run/a.sock",
                      "summary": "socket /run/a.sock", "detail": "socket /run/a.sock",
                      "own_queues": true},
            "state": {"connected": true, "ready": true, "features": "0x1",
                      "queue_pairs_active": 2},
            "counters": {"rx_packets": 5, "tx_packets": 7,
                         "drops": {"no_rx_buffer": 2, "hairpin": 1}, "fdb_learned": 1},
            "fdb_max_learned": 1024
        }]));
        let lines: Vec<&str> = p.lines().collect();
        assert!(lines[0].starts_with("PORT"));
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "a",
                "br0",
                "server",
                "trunk",
                "10,20",
                "up",
                "/run/a.sock",
                "2",
                "5",
                "7",
                "3",
                "1/1024"
            ]
        );
        assert_eq!(vlan_text(&json!({"mode": "access", "tag": 3})), "access 3");
        assert_eq!(vlan_text(&serde_json::Value::Null), "-");
        let f = fdb_table(&json!([
            {"mac": "02:00:00:00:00:01", "vlan": 0, "port": "a", "age_s": 4, "static": false},
            {"mac": "02:00:00:00:00:02", "vlan": 5, "port": "b", "age_s": null, "static": true}
        ]));
        let rows: Vec<Vec<&str>> = f
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0], ["02:00:00:00:00:01", "a", "learnt", "0", "4"]);
        assert_eq!(rows[1], ["02:00:00:00:00:02", "b", "static", "5", "-"]);
    }

    #[test]
    fn an_idle_core_shows_dashes_not_nan() {
        let mut s = sample();
        s.workers[0] = WorkerSnapshot {
            core: 1,
            bursts: vec![0; 7],
            ..Default::default()
        };
        let out = stats_tables(&s, "since start");
        let row: Vec<&str> = out.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(row, ["1", "-", "-", "0", "-", "0"]);
        assert!(!out.contains("NaN"));
    }

    #[test]
    fn a_tunnel_ports_detail_lists_its_remote_ends_and_the_macs_behind_them() {
        let port = serde_json::json!({
            "name": "tun", "bridge": "br0", "queues": 1,
            "words": {"mode": "vxlan", "attached_to": "vni 42", "summary": "vni 42",
                      "detail": "vni 42 from 10.0.0.1:4789, static to 10.0.0.2", "own_queues": false},
            "state": {"connected": true, "ready": true, "queue_pairs_active": 1},
            "counters": {"rx_packets": 3, "tx_packets": 4, "drops": {}},
            "remotes": [
                {"address": "10.0.0.2", "rx_packets": 3, "tx_packets": 4, "rx_bytes": 1, "tx_bytes": 1,
                 "macs": [{"mac": "02:00:00:00:00:05", "learnt": true},
                          {"mac": "02:00:00:00:00:06", "learnt": false}]},
                {"address": "10.0.0.3", "rx_packets": 0, "tx_packets": 4, "rx_bytes": 0, "tx_bytes": 1,
                 "macs": []}
            ]
        });
        let out = port_detail(&port);
        assert!(
            out.contains("vni 42 from 10.0.0.1:4789, static to 10.0.0.2"),
            "{out}"
        );
        let row = |addr: &str| {
            out.lines()
                .find(|l| l.starts_with(addr))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        };
        assert_eq!(
            row("10.0.0.2").as_deref(),
            Some("10.0.0.2 02:00:00:00:00:05 02:00:00:00:00:06* 3 4"),
            "{out}"
        );
        assert_eq!(row("10.0.0.3").as_deref(), Some("10.0.0.3 - 0 4"), "{out}");
        assert!(!out.contains("evpn:"), "{out}");
    }

    #[test]
    fn an_evpn_ports_detail_says_where_its_control_stands() {
        let mut port = serde_json::json!({
            "name": "tun", "bridge": "br0", "queues": 1,
            "words": {"mode": "vxlan", "attached_to": "vni 100", "summary": "vni 100",
                      "detail": "vni 100 from 10.0.0.1:4789, evpn", "own_queues": false},
            "state": {"connected": true, "ready": true, "queue_pairs_active": 1},
            "counters": {"rx_packets": 0, "tx_packets": 0, "drops": {}},
            "evpn": {"state": "stale", "frr_running": false, "advertised": 2,
                     "remote_macs": 4, "flood": ["10.0.0.2", "10.0.0.3"]},
            "remotes": []
        });
        let out = port_detail(&port);
        assert!(
            out.contains(
                "evpn: stale (FRR not running), 2 local MACs advertised, routes: 4 remote \
                 MACs, flood to 10.0.0.2, 10.0.0.3"
            ),
            "{out}"
        );
        port["evpn"] = serde_json::json!({"state": "failed", "frr_running": true,
            "error": "cannot create bridge vsb100: Operation not permitted",
            "advertised": 0, "remote_macs": 0, "flood": []});
        let out = port_detail(&port);
        assert!(
            out.contains(
                "evpn: failed (FRR running): cannot create bridge vsb100: Operation not \
                 permitted, 0 local MACs advertised, routes: 0 remote MACs, flood to nobody"
            ),
            "{out}"
        );
    }

    #[test]
    fn port_detail_has_a_line_per_queue_pair() {
        let port = serde_json::json!({
            "name": "vm1", "bridge": "br0", "mode": "server", "socket": "/s", "queues": 4,
            "words": {"mode": "server", "attached_to": "/s", "summary": "socket /s",
                      "detail": "socket /s", "own_queues": true},
            "state": {"connected": true, "ready": true, "queue_pairs_active": 2,
                      "features": format!("{:#x}", (1u64 << 15) | (1 << 22) | (1 << 32) | (1 << 40))},
            "counters": {"rx_packets": 30, "tx_packets": 12, "drops": {},
                         "queues": [{"rx_packets": 20, "tx_packets": 5},
                                    {"rx_packets": 10, "tx_packets": 7}]}
        });
        let out = port_detail(&port);
        let lines: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[1][0], "vm1");
        assert_eq!(lines[3].join(" "), "queue pairs: 2 active of 4 configured");
        assert_eq!(lines[4].join(" "), "features: MRG_RXBUF MQ VERSION_1 bit40");
        assert_eq!(
            lines[6],
            ["QUEUE", "PAIR", "RX", "PACKETS", "TX", "PACKETS"]
        );
        assert_eq!(lines[7], ["0", "20", "5"]);
        assert_eq!(lines[8], ["1", "10", "7"]);
        assert_eq!(lines.len(), 9);
    }

    #[test]
    fn show_is_a_tree_of_bridges_and_their_ports() {
        let bridges = serde_json::json!([
            {"name": "br0", "fdb_aging_s": 300, "fdb_max_learned": 8192},
            {"name": "br1", "fdb_aging_s": 60, "fdb_max_learned": 100}
        ]);
        let ports = serde_json::json!([{
            "name": "vm1", "bridge": "br0", "type": "vhost-user", "mode": "server",
            "queues": 4, "socket": "/run/vringswitch/vm1.sock",
            "vlan": {"mode": "access", "tag": 10},
            "words": {"mode": "server", "attached_to": "/run/vringswitch/vm1.sock",
                      "summary": "socket /run/vringswitch/vm1.sock",
                      "detail": "socket /run/vringswitch/vm1.sock", "own_queues": true},
            "state": {"connected": true, "ready": true, "queue_pairs_active": 1},
            "cores": [0, 1]
        }]);
        assert_eq!(
            show_tree(&bridges, &ports, &serde_json::json!([])),
            "bridge br0 (fdb ageing 300 s, learns at most 8192)\n\
             \x20   port vm1: vhost-user server, link up, queues 1 of 4, vlan access 10, cores 0,1\n\
             \x20       socket /run/vringswitch/vm1.sock\n\
             bridge br1 (fdb ageing 60 s, learns at most 100)\n\
             \x20   no ports\n"
        );
    }

    #[test]
    fn difference_subtracts_matching_ports_and_cores() {
        let earlier = sample();
        let mut later = sample();
        later.workers[0].packets = 25;
        later.workers[0].bursts[3] = 3;
        later.ports[0].rx_packets = 30;
        later.ports[0].drops.insert("no_rx_buffer".into(), 9);
        later.ports.push(PortSnapshot {
            name: "vm2".into(),
            rx_packets: 5,
            ..Default::default()
        });
        let d = difference(&later, &earlier);
        assert_eq!(d.workers[0].packets, 15);
        assert_eq!(d.workers[0].bursts[3], 2);
        assert_eq!(d.ports[0].rx_packets, 20);
        assert_eq!(d.ports[0].drops["no_rx_buffer"], 3);
        assert_eq!(d.ports[1].rx_packets, 5);
    }
}
