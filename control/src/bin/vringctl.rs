//! `vringctl`: the command line of vringswitch, a client of the daemon's HTTP API.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hyper::Method;
use serde_json::{json, Value};
use vringswitch_control::client::{ApiClient, ClientError, Endpoint};
use vringswitch_control::ctl;
use vringswitch_control::manpage::{self, Section};
use vringswitch_metrics::Snapshot;

/// Control and inspect a running vringswitch.
#[derive(Parser, Debug)]
#[command(name = "vringctl", version)]
struct Args {
    /// The daemon's API: HOST:PORT, http://HOST:PORT or HOST (port 9180), or the path of
    /// its --api-socket [default: /run/vringswitch/api.sock, the shipped unit's, when it
    /// is there (changes are taken there), else 127.0.0.1:9180].
    #[arg(long, global = true, value_name = "ADDR|PATH", env = "VRINGSWITCH_API")]
    api: Option<Endpoint>,
    /// Bearer token, when the daemon requires one.
    #[arg(long, global = true, value_name = "TOKEN", env = "VRINGSWITCH_TOKEN")]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Bridges: list, show, add, del.
    #[command(subcommand)]
    Bridge(BridgeCmd),
    /// Ports: list, show, add, set (move, VLAN), del.
    #[command(subcommand)]
    Port(Box<PortCmd>),
    /// A bridge's forwarding table: show, add a static entry, flush.
    #[command(subcommand)]
    Fdb(FdbCmd),
    /// The whole switch: bridges and their ports (type, link, queues, VLAN, socket).
    Show,
    /// Captures a port's frames as pcapng, for tshark, Wireshark or tcpdump: to a pipe
    /// (vringctl capture vm1 | tshark -r -) or a file (-w FILE). Ends after --count frames,
    /// --seconds, or Ctrl-C.
    Capture {
        /// The port.
        port: String,
        /// Stop after this many frames.
        #[arg(long, short = 'c', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        /// Stop after this many seconds (up to 86400).
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
        seconds: Option<u64>,
        /// rx: frames the port's VM sends; tx: frames delivered to it, as it gets them
        /// (VLAN tag pushed or popped); both.
        #[arg(long, short = 'd', value_enum, default_value = "both")]
        direction: CaptureDirection,
        /// Bytes kept of each frame (1 to 262144).
        #[arg(long, short = 's', value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..=262_144))]
        snaplen: Option<u32>,
        /// Write to FILE (replaced) instead of standard output.
        #[arg(long, short = 'w', value_name = "FILE")]
        write: Option<std::path::PathBuf>,
    },
    /// Prints a shell completion script (vringctl completions bash >
    /// /usr/share/bash-completion/completions/vringctl).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Prints this command's manual page (roff), for man(1); with --dir, writes it and one
    /// page per subcommand (vringctl-port.1, vringctl-port-add.1, ...) there.
    Manpage {
        /// Write every page into this directory (e.g. /usr/local/share/man/man1).
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
    /// Port mirroring (SPAN): the frames of some ports copied to another, for an IDS.
    #[command(subcommand)]
    Mirror(MirrorCmd),
    /// Security groups (OpenStack's model): named lists of allow rules that filter what
    /// the VMs of their ports send and receive (port add/set --security-groups).
    #[command(subcommand)]
    Sg(SgCmd),
    /// The connections security groups track (as conntrack -L), or --flush them.
    Conntrack {
        /// Removes them instead: their next frames must open them again.
        #[arg(long)]
        flush: bool,
        /// Those charged to this port (the first filtered port they crossed).
        #[arg(long)]
        port: Option<String>,
        /// Those on this bridge.
        #[arg(long)]
        bridge: Option<String>,
        /// Those of this protocol: tcp, udp, icmp, icmpv6 or a number.
        #[arg(long)]
        protocol: Option<String>,
        /// Those with this address at either end.
        #[arg(long)]
        address: Option<String>,
        /// At most this many listed [default: 1000].
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// What the daemon logs, per module, changed at runtime (as ovs-appctl vlog/set).
    #[command(subcommand)]
    Log(LogCmd),
    /// Where would this frame go? The data path's decision for a frame PORT sends (VLAN,
    /// port security, learning, FDB hit or flood, each port's tag), as ovs-appctl
    /// ofproto/trace; nothing is learnt or sent.
    Trace {
        /// The port that sends the frame.
        port: String,
        /// Its source MAC.
        #[arg(long, value_parser = mac_arg)]
        src: String,
        /// Its destination MAC (ff:ff:ff:ff:ff:ff floods).
        #[arg(long, value_parser = mac_arg)]
        dst: String,
        /// The 802.1Q tag it carries (untagged without).
        #[arg(long, value_name = "VID", value_parser = clap::value_parser!(u16).range(0..=4094))]
        vlan: Option<u16>,
        /// Its EtherType, e.g. 0x0806 [default: 0x0800, or the addresses' family's].
        #[arg(long, value_name = "TYPE", value_parser = ethertype_arg)]
        ethertype: Option<u16>,
        /// For security groups: the packet's source IP address (with --ip-dst).
        #[arg(long, value_name = "IP")]
        ip_src: Option<String>,
        /// The packet's destination IP address.
        #[arg(long, value_name = "IP")]
        ip_dst: Option<String>,
        /// tcp, udp, sctp, icmp, icmpv6 or a number [default: tcp].
        #[arg(long, value_name = "PROTO")]
        protocol: Option<String>,
        /// TCP, UDP or SCTP source port [default: 40000].
        #[arg(long, value_name = "PORT")]
        src_port: Option<u16>,
        /// TCP, UDP or SCTP destination port [default: 80].
        #[arg(long, value_name = "PORT")]
        dst_port: Option<u16>,
        /// TCP flags, comma-separated (syn, ack, fin, rst, psh, urg) [default: syn].
        #[arg(long, value_name = "FLAGS")]
        tcp_flags: Option<String>,
        /// ICMP type [default: echo request].
        #[arg(long, value_name = "TYPE")]
        icmp_type: Option<u8>,
        /// ICMP code [default: 0].
        #[arg(long, value_name = "CODE")]
        icmp_code: Option<u8>,
    },
    /// Which queue runs on which core, and each one's share of its core (as ovs-appctl
    /// dpif-netdev/pmd-rxq-show).
    Cores {
        /// Over this many seconds instead of since start.
        #[arg(long, short, value_name = "SECS", value_parser = parse_interval)]
        interval: Option<f64>,
    },
    /// Replaces the running daemon by the binary now installed at its path, without any
    /// VM's link going down (`systemctl reload vringswitch` runs this). If the new binary
    /// fails, the running daemon serves on and this says why, with a non-zero exit.
    Upgrade {
        /// Seconds the new binary may take to start, and again to take everything over
        /// [default: 30].
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=600))]
        deadline: Option<u64>,
    },
    /// Per-core load (busy %, cycles per packet, bursts) and per-port counters.
    Stats {
        /// Show what happened over this many seconds instead of the totals since start.
        #[arg(long, short, value_name = "SECS", value_parser = parse_interval)]
        interval: Option<f64>,
    },
}

#[derive(Subcommand, Debug)]
enum MirrorCmd {
    /// Every mirror.
    List,
    /// One mirror.
    Show { name: String },
    /// Copies the frames of --ports to --output (on the same bridge), from their next burst
    /// on. The output then carries nothing else: it is not flooded to, no destination, and
    /// what it sends is not taken. Copies leave it tagged with their VLAN (untagged in
    /// VLAN 0).
    Add {
        name: String,
        /// The ports whose frames are copied, e.g. vm1,vm2.
        #[arg(long, value_name = "PORTS", value_delimiter = ',', required = true)]
        ports: Vec<String>,
        /// The port that gets the copies.
        #[arg(long, value_name = "PORT")]
        output: String,
        /// rx: the frames they send; tx: the frames delivered to them; both.
        #[arg(long, value_parser = ["rx", "tx", "both"], default_value = "both")]
        direction: String,
        /// A mirror of that name already there is no error if it is as asked.
        #[arg(long)]
        may_exist: bool,
    },
    /// Deletes a mirror: its output takes part in the bridge again.
    Del {
        name: String,
        /// No mirror of that name is no error.
        #[arg(long)]
        if_exists: bool,
    },
}

#[derive(Subcommand, Debug)]
enum SgCmd {
    /// Every group: its rules and the ports in it.
    List,
    /// One group's rules.
    Show { name: String },
    /// Creates a group, with no rules (it allows nothing until given some).
    Add {
        name: String,
        /// Every frame checked against the rules both ways, nothing tracked (the default
        /// is stateful: replies pass without a rule).
        #[arg(long)]
        stateless: bool,
    },
    /// Adds a rule to a group (as openstack security group rule create); its ports'
    /// connections are checked against the new rules from their next frame.
    RuleAdd {
        group: String,
        /// ingress: what the VMs may receive; egress: what they may send.
        #[arg(long, value_parser = ["ingress", "egress"])]
        direction: String,
        /// IPv4 or IPv6 [default: IPv4].
        #[arg(long, value_parser = ["IPv4", "IPv6"])]
        ethertype: Option<String>,
        /// tcp, udp, icmp, icmpv6, sctp or a number [default: any].
        #[arg(long)]
        protocol: Option<String>,
        /// TCP or UDP destination ports, PORT or MIN:MAX.
        #[arg(long, value_name = "PORTS", value_parser = port_range)]
        dst_port: Option<(u16, u16)>,
        /// ICMP type, and code.
        #[arg(long, value_name = "TYPE")]
        icmp_type: Option<u16>,
        #[arg(long, value_name = "CODE", requires = "icmp_type")]
        icmp_code: Option<u16>,
        /// The other end's addresses, a CIDR.
        #[arg(long, value_name = "CIDR", conflicts_with = "remote_group")]
        remote_ip: Option<String>,
        /// The other end is a port of this group.
        #[arg(long, value_name = "GROUP")]
        remote_group: Option<String>,
    },
    /// Removes rule N (as `sg show` numbers them) from a group.
    RuleDel { group: String, number: usize },
    /// Deletes a group no port and no other group's rule names.
    Del {
        name: String,
        /// No group of that name is no error.
        #[arg(long)]
        if_exists: bool,
    },
}

/// `22` or `8000:8080`.
fn port_range(s: &str) -> Result<(u16, u16), String> {
    let p = |x: &str| {
        x.parse::<u16>()
            .map_err(|_| format!("{x:?} is not a port number (1 to 65535)"))
    };
    match s.split_once(':') {
        Some((a, b)) => Ok((p(a)?, p(b)?)),
        None => p(s).map(|x| (x, x)),
    }
}

#[derive(Subcommand, Debug)]
enum LogCmd {
    /// The level of messages in general and of each module.
    Show,
    /// Sets levels: LEVEL for messages in general, MODULE=LEVEL for one module
    /// (vringctl log set debug; vringctl log set vhost_user=debug http=debug); MODULE=default
    /// makes a module follow the general level again. Levels: off, error, warn, info,
    /// debug, trace. Not saved: a restart logs as VRINGSWITCH_LOG says.
    Set {
        #[arg(required = true, value_name = "[MODULE=]LEVEL", value_parser = log_setting)]
        settings: Vec<(Option<String>, Option<String>)>,
    },
    /// Back to the levels the daemon started with (VRINGSWITCH_LOG).
    Reset,
}

/// `LEVEL` or `MODULE=LEVEL` (`MODULE=default` to drop the module's own level).
fn log_setting(s: &str) -> Result<(Option<String>, Option<String>), String> {
    use vringswitch_control::log_levels::{target_of, Level};
    let level = |l: &str| {
        Level::parse(l)
            .map(|l| l.name().to_owned())
            .ok_or_else(|| format!("{l:?} is not a level: off, error, warn, info, debug or trace"))
    };
    match s.split_once('=') {
        None => Ok((None, Some(level(s)?))),
        Some((module, "default")) => {
            target_of(module)?;
            Ok((Some(module.to_owned()), None))
        }
        Some((module, l)) => {
            target_of(module)?;
            Ok((Some(module.to_owned()), Some(level(l)?)))
        }
    }
}

/// Which frames of a port a capture takes.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CaptureDirection {
    Rx,
    Tx,
    Both,
}

impl CaptureDirection {
    fn api(self) -> &'static str {
        match self {
            CaptureDirection::Rx => "rx",
            CaptureDirection::Tx => "tx",
            CaptureDirection::Both => "both",
        }
    }
}

#[derive(Subcommand, Debug)]
enum BridgeCmd {
    /// Every bridge with its ports.
    List,
    /// One bridge.
    Show { name: String },
    /// Creates a bridge.
    Add {
        name: String,
        /// Seconds after which an idle learnt address is forgotten.
        #[arg(long, value_name = "SECS")]
        fdb_aging: Option<u64>,
        /// Most addresses the bridge learns over all its ports [default: 8192]; past it,
        /// frames to further addresses are flooded.
        #[arg(long, value_name = "N")]
        fdb_max_learned: Option<u32>,
        /// A bridge of that name already there is no error if it has the external IDs
        /// given (it is left as it is); otherwise vringctl says what differs.
        #[arg(long)]
        may_exist: bool,
        #[command(flatten)]
        ids: ExternalIdArgs,
    },
    /// Changes a bridge while it forwards: FDB ageing, its limit, external IDs.
    Set {
        name: String,
        /// Seconds after which an idle learnt address is forgotten, from now on.
        #[arg(long, value_name = "SECS")]
        fdb_aging: Option<u64>,
        /// Most addresses the bridge learns (lowering it forgets none already learnt).
        #[arg(long, value_name = "N")]
        fdb_max_learned: Option<u32>,
        #[command(flatten)]
        ids: ExternalIdArgs,
        /// Removes this external ID (repeatable).
        #[arg(long = "remove-external-id", value_name = "KEY")]
        remove_ids: Vec<String>,
    },
    /// Deletes a bridge (it must have no ports, unless --with-ports).
    Del {
        name: String,
        /// No bridge of that name is no error.
        #[arg(long)]
        if_exists: bool,
        /// Deletes its ports first, as ovs-vsctl del-br does.
        #[arg(long)]
        with_ports: bool,
    },
}

/// External IDs on the command line.
#[derive(clap::Args, Debug, Default)]
struct ExternalIdArgs {
    /// Metadata for orchestrators, KEY=VALUE (repeatable): kept, shown, never acted on.
    #[arg(long = "external-id", value_name = "KEY=VALUE", value_parser = external_id_arg)]
    external_ids: Vec<(String, String)>,
}

impl ExternalIdArgs {
    /// The IDs as the API takes them (none given: nothing).
    fn json(&self) -> Option<Value> {
        (!self.external_ids.is_empty()).then(|| {
            Value::Object(
                self.external_ids
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect(),
            )
        })
    }

    /// The IDs to set and `remove` to remove, as a PATCH takes them.
    fn patch(&self, remove: &[String]) -> Option<Value> {
        let mut out = serde_json::Map::new();
        for k in remove {
            out.insert(k.clone(), Value::Null);
        }
        for (k, v) in &self.external_ids {
            out.insert(k.clone(), json!(v));
        }
        (!out.is_empty()).then_some(Value::Object(out))
    }
}

/// `KEY=VALUE` of an external ID, its key checked as the daemon checks it.
fn external_id_arg(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    vringswitch_config::check_external_id_key(key)?;
    Ok((key.to_owned(), value.to_owned()))
}

/// A VLAN setting on the command line.
#[derive(clap::Args, Debug, Default)]
#[group(multiple = false)]
struct VlanArgs {
    /// Access port of this VLAN (untagged frames).
    #[arg(long, value_name = "VLAN")]
    access: Option<u16>,
    /// Trunk of these VLANs (tagged frames), e.g. 10,20.
    #[arg(long, value_name = "VLANS", value_delimiter = ',')]
    trunk: Option<Vec<u16>>,
}

impl VlanArgs {
    fn json(&self) -> Option<Value> {
        match (&self.access, &self.trunk) {
            (Some(tag), _) => Some(json!({"mode": "access", "tag": tag})),
            (None, Some(tags)) => Some(json!({"mode": "trunk", "tags": tags})),
            (None, None) => None,
        }
    }
}

/// A port's policers, as `key=value` lists.
#[derive(clap::Args, Debug)]
struct PoliceArgs {
    /// Polices what the port sends (its VM's frames), e.g. `rate_kbps=100000` or
    /// `rate_kbps=100000,burst_kb=10000,rate_pps=50000,burst_packets=5000`; frames past it
    /// are dropped and counted as `policed`.
    #[arg(long, value_name = "KEY=N,...", value_parser = police_spec)]
    police_rx: Option<Value>,
    /// Polices what the port is sent (frames delivered to its VM), as --police-rx.
    #[arg(long, value_name = "KEY=N,...", value_parser = police_spec)]
    police_tx: Option<Value>,
}

impl PoliceArgs {
    /// Adds the policers given to a request body.
    fn add_to(&self, body: &mut Value) {
        for (key, v) in [
            ("police_rx", &self.police_rx),
            ("police_tx", &self.police_tx),
        ] {
            if let Some(v) = v {
                body[key] = v.clone();
            }
        }
    }
}

/// `rate_kbps=100000,burst_kb=10000` as the API's object (the daemon checks the keys).
fn police_spec(s: &str) -> Result<Value, String> {
    let mut o = serde_json::Map::new();
    for pair in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not KEY=N (rate_kbps=100000, say)"))?;
        let n: u64 = v
            .parse()
            .map_err(|_| format!("{k}={v}: {v:?} is not a whole number"))?;
        o.insert(k.to_owned(), json!(n));
    }
    if o.is_empty() {
        return Err("empty: give rate_kbps=N, rate_pps=N or both".into());
    }
    Ok(Value::Object(o))
}

// Parsed once per run: the size of `Add` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum PortCmd {
    /// Every port with its state and counters.
    List,
    /// One port, whole (as JSON).
    Show { name: String },
    /// Creates a port: a VM's vhost-user socket, a TAP interface on the host, or an AF_XDP
    /// socket on a queue of a host interface.
    Add {
        name: String,
        #[arg(long)]
        bridge: String,
        /// vhost-user: a VM's socket; tap: a TAP interface on the host; afxdp: an AF_XDP
        /// socket on a queue of a host interface; vxlan: a tunnel to the segment on other
        /// hosts.
        #[arg(long = "type", default_value = "vhost-user", value_parser = port_types())]
        kind: String,
        /// vhost-user: the socket, inside the daemon's socket directory [default:
        /// SOCKET_DIR/NAME.sock, or SOCKET_DIR/client/NAME.sock with --mode client].
        #[arg(long, value_name = "PATH")]
        socket: Option<std::path::PathBuf>,
        /// vhost-user: server (vringswitch listens, the default) or client (the VMM listens).
        #[arg(long, value_parser = ["server", "client"])]
        mode: Option<String>,
        /// vhost-user: most queue pairs accepted.
        #[arg(long)]
        queues: Option<u16>,
        /// tap: the interface [default: the port's name]; created if missing. afxdp: the
        /// interface [default: the port's name], which must exist.
        #[arg(long, value_name = "NAME")]
        ifname: Option<String>,
        /// tap: the MTU to give the interface.
        #[arg(long)]
        mtu: Option<u32>,
        /// afxdp: the interface queue to bind to [default: 0].
        #[arg(long)]
        queue: Option<u32>,
        /// afxdp: where the XDP program runs [default: best-effort, the first of native
        /// with zero-copy, native and generic that the interface takes].
        #[arg(long, value_parser = ["best-effort", "native-with-zerocopy", "native", "generic"])]
        xdp_mode: Option<String>,
        /// vxlan: the segment's VNI (1 to 16777215).
        #[arg(long)]
        vni: Option<u32>,
        /// vxlan: this host's tunnel address (IPv4; IPv6 with --control static).
        #[arg(long, value_name = "IP")]
        local: Option<String>,
        /// vxlan: the UDP port [default: 4789].
        #[arg(long)]
        udp_port: Option<u16>,
        /// vxlan: how the other hosts are learnt (static: from --remote).
        #[arg(long, value_parser = ["static", "evpn"])]
        control: Option<String>,
        /// vxlan, static: the other hosts' tunnel addresses, e.g. 192.0.2.11,192.0.2.12.
        #[arg(long = "remote", value_name = "IPS", value_delimiter = ',')]
        remotes: Option<Vec<String>>,
        /// vhost-user and tap: offer checksum and segmentation offloads to the peer
        /// [default: on]. Off, the peer sends complete frames and gets them.
        #[arg(long, value_parser = ["on", "off"])]
        offloads: Option<String>,
        #[command(flatten)]
        vlan: VlanArgs,
        /// Locks the port to these source MACs (port security), e.g. 02:00:00:00:00:01.
        #[arg(long = "allow-mac", value_name = "MAC", value_delimiter = ',', value_parser = mac_arg)]
        allow_mac: Option<Vec<String>>,
        /// The port's security groups, e.g. web,ssh: its VM sends and receives what their
        /// rules allow.
        #[arg(long, value_name = "GROUPS", value_delimiter = ',')]
        security_groups: Option<Vec<String>>,
        /// The port's IP addresses, e.g. 10.0.0.5,2001:db8::5 (prefixes too): the only
        /// sources its VM may send from, and what makes it a member of its groups.
        #[arg(long, value_name = "IPS", value_delimiter = ',')]
        allowed_ips: Option<Vec<String>>,
        /// Most addresses the bridge learns on this port [default: 1024]; past it, frames
        /// to the port's further addresses are flooded.
        #[arg(long, value_name = "N")]
        fdb_max_learned: Option<u32>,
        #[command(flatten)]
        police: PoliceArgs,
        /// A setting of the port's kind, as the API names it, for one no flag here names:
        /// KEY=VALUE, VALUE read as JSON when it is (a number, true, false), else as text.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
        set: Vec<(String, Value)>,
        /// A port of that name already there is no error (it is left as it is).
        #[arg(long)]
        may_exist: bool,
        /// down: the port carries no traffic and is expected to have no VM.
        #[arg(long, value_parser = ["up", "down"])]
        admin: Option<String>,
        #[command(flatten)]
        ids: ExternalIdArgs,
    },
    /// Moves a port to another bridge, changes its VLAN setting, its port security and/or
    /// its limit on learnt addresses.
    Set {
        name: String,
        #[arg(long)]
        bridge: Option<String>,
        #[command(flatten)]
        vlan: VlanArgs,
        /// Removes the VLAN setting: every VLAN as it comes.
        #[arg(long, conflicts_with_all = ["access", "trunk"])]
        no_vlan: bool,
        /// Locks the port to these source MACs (port security), replacing any list.
        #[arg(long = "allow-mac", value_name = "MAC", value_delimiter = ',', value_parser = mac_arg)]
        allow_mac: Option<Vec<String>>,
        /// Unlocks the port: any source MAC is accepted again.
        #[arg(long, conflicts_with = "allow_mac")]
        no_mac_lock: bool,
        /// The port's security groups, replacing any list.
        #[arg(long, value_name = "GROUPS", value_delimiter = ',')]
        security_groups: Option<Vec<String>>,
        /// Takes the port out of every group: nothing is filtered.
        #[arg(long, conflicts_with = "security_groups")]
        no_security_groups: bool,
        /// The port's IP addresses, replacing any list.
        #[arg(long, value_name = "IPS", value_delimiter = ',')]
        allowed_ips: Option<Vec<String>>,
        /// Any source IP is accepted again.
        #[arg(long, conflicts_with = "allowed_ips")]
        no_allowed_ips: bool,
        /// Most addresses the bridge learns on this port (those it has stay).
        #[arg(long, value_name = "N")]
        fdb_max_learned: Option<u32>,
        #[command(flatten)]
        police: PoliceArgs,
        /// Removes the policer of what the port sends.
        #[arg(long, conflicts_with = "police_rx")]
        no_police_rx: bool,
        /// Removes the policer of what the port is sent.
        #[arg(long, conflicts_with = "police_tx")]
        no_police_tx: bool,
        /// down: the switch stops polling the port and delivering to it, and monitoring
        /// expects it to have no VM; up: back to normal.
        #[arg(long, value_parser = ["up", "down"])]
        admin: Option<String>,
        #[command(flatten)]
        ids: ExternalIdArgs,
        /// Removes this external ID (repeatable).
        #[arg(long = "remove-external-id", value_name = "KEY")]
        remove_ids: Vec<String>,
        /// A setting of the port's kind that it takes while it runs, e.g. mtu=1400 on a
        /// TAP port (repeatable; VALUE read as JSON when it is, null for the default). Any
        /// other is refused: it needs the port made again.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
        set: Vec<(String, Value)>,
    },
    /// Deletes a port (its VM is disconnected).
    Del {
        name: String,
        /// No port of that name is no error.
        #[arg(long)]
        if_exists: bool,
    },
}

#[derive(Subcommand, Debug)]
enum FdbCmd {
    /// The entries of a bridge's forwarding table.
    Show { bridge: String },
    /// Adds a static entry: frames to MAC go to PORT.
    Add {
        bridge: String,
        #[arg(value_parser = mac_arg)]
        mac: String,
        #[arg(long)]
        port: String,
        /// The entry's VLAN [default: the port's untagged VLAN].
        #[arg(long)]
        vlan: Option<u16>,
    },
    /// Removes one entry, learnt or static.
    Del {
        bridge: String,
        #[arg(value_parser = mac_arg)]
        mac: String,
        /// The entry's VLAN [needed only when MAC is known on several].
        #[arg(long)]
        vlan: Option<u16>,
        /// No such entry is no error.
        #[arg(long)]
        if_exists: bool,
    },
    /// Removes every entry, or only those of --port.
    Flush {
        bridge: String,
        #[arg(long)]
        port: Option<String>,
    },
}

/// The manual page's sections that the arguments do not give.
const MANUAL: &[Section] = &[
    Section {
        title: "ENVIRONMENT",
        intro: "",
        entries: &[
            ("VRINGSWITCH_API", "As --api."),
            ("VRINGSWITCH_TOKEN", "As --token."),
        ],
    },
    Section {
        title: "EXIT STATUS",
        intro: "",
        entries: &[
            (
                "0",
                "Done (with --may-exist or --if-exists, also when there was nothing to do).",
            ),
            (
                "1",
                "The daemon refused the request (the message says why: an unknown name, a \
                 conflict, an invalid setting) or failed.",
            ),
            (
                "2",
                "Bad usage: an unknown command or option, or a value vringctl refuses before \
                 asking the daemon.",
            ),
            ("3", "The daemon could not be reached."),
        ],
    },
    Section {
        title: "FILES",
        intro: "",
        entries: &[(
            "/run/vringswitch/api.sock",
            "The API socket of the shipped systemd unit: used when no --api is given and it \
             takes the connection, else 127.0.0.1:9180 is.",
        )],
    },
    Section {
        title: "SEE ALSO",
        intro: "vringswitch(1), and the page of each command: vringctl-bridge(1), \
                vringctl-port(1), vringctl-port-add(1) and so on (vringctl manpage --dir DIR \
                writes them all).",
        entries: &[],
    },
];

/// A MAC address as the daemon takes it (aa:bb:cc:dd:ee:ff): refused here, as a usage error
/// (exit 2), rather than sent.
fn mac_arg(s: &str) -> Result<String, String> {
    vringswitch_config::parse_mac(s).map(|_| s.to_owned())
}

/// An EtherType, in hex (0x0806) or decimal, at least 0x0600.
fn ethertype_arg(s: &str) -> Result<u16, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|_| format!("{s:?} is not an EtherType (0x0600 to 0xffff)"))?;
    if v < 0x0600 {
        return Err(format!("{s} is a length, not an EtherType: 0x0600 or more"));
    }
    Ok(v)
}

/// A number of seconds, above 0 and at most a day.
fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

/// Exit codes: 0 success, 1 the API refused or failed, 2 bad usage (clap), 3 unreachable.
fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Connect { .. } | ClientError::Http { .. } => 3,
        ClientError::Api { .. } | ClientError::Decode { .. } | ClientError::Refused(_) => 1,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(out) = offline(&args.command) {
        print!("{out}");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vringctl: error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Capture { .. } = args.command {
        return runtime.block_on(capture(args));
    }
    match runtime.block_on(run(args)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vringctl: error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// `vringctl capture`: the stream to its file or standard output, a summary on stderr.
async fn capture(args: Args) -> ExitCode {
    use std::io::IsTerminal;
    use vringswitch_control::capture_client::{capture_to, end_message, CaptureError};
    let Command::Capture {
        port,
        count,
        seconds,
        direction,
        snaplen,
        write,
    } = args.command
    else {
        return ExitCode::FAILURE;
    };
    if write.is_none() && std::io::stdout().is_terminal() {
        eprintln!(
            "vringctl: error: a capture is binary pcapng: write it to a file (-w FILE) or \
             pipe it (vringctl capture {port} | tshark -r -)"
        );
        return ExitCode::from(2);
    }
    let mut out: Box<dyn std::io::Write> = match &write {
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("vringctl: error: cannot create {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => Box::new(std::io::stdout().lock()),
    };
    let mut path = format!(
        "/v1/ports/{}/capture?direction={}",
        seg(&port),
        direction.api()
    );
    for (key, value) in [
        ("count", count),
        ("seconds", seconds),
        ("snaplen", snaplen.map(u64::from)),
    ] {
        if let Some(v) = value {
            path += &format!("&{key}={v}");
        }
    }
    let api = ApiClient {
        endpoint: endpoint(args.api, Path::new(DEFAULT_API_SOCKET)),
        token: args.token,
    };
    let stop = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    match capture_to(&api, &path, &mut *out, stop).await {
        Ok(end) => {
            eprintln!("vringctl: {}", end_message(&port, &end));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vringctl: error: {e}");
            ExitCode::from(match &e {
                CaptureError::Api(c) => exit_code(c),
                _ => 1,
            })
        }
    }
}

/// Output that needs no daemon: completions and the manual page.
fn offline(command: &Command) -> Option<String> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Args::command(), "vringctl", &mut out);
        }
        Command::Manpage { dir: None } => {
            return manpage::page(Args::command(), MANUAL).ok();
        }
        Command::Manpage { dir: Some(dir) } => {
            return Some(match manpage::write_all(Args::command(), MANUAL, dir) {
                Ok(files) => files.iter().map(|f| format!("{}\n", f.display())).collect(),
                Err(e) => {
                    eprintln!(
                        "vringctl: error: cannot write the manual pages into {}: {e}",
                        dir.display()
                    );
                    std::process::exit(1);
                }
            });
        }
        _ => return None,
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

async fn run(args: Args) -> Result<String, ClientError> {
    let api = ApiClient {
        endpoint: endpoint(args.api, Path::new(DEFAULT_API_SOCKET)),
        token: args.token,
    };
    let json = args.json;
    match args.command {
        Command::Bridge(cmd) => bridge(&api, cmd, json).await,
        Command::Port(cmd) => port(&api, *cmd, json).await,
        Command::Fdb(cmd) => fdb(&api, cmd, json).await,
        Command::Log(cmd) => log(&api, cmd, json).await,
        Command::Completions { .. } | Command::Manpage { .. } | Command::Capture { .. } => {
            Ok(offline(&args.command).unwrap_or_default())
        }
        Command::Show => {
            let bridges = send(&api, Method::GET, "/v1/bridges", None).await?;
            let ports = send(&api, Method::GET, "/v1/ports", None).await?;
            let mirrors = send(&api, Method::GET, "/v1/mirrors", None).await?;
            if json {
                Ok(pretty(
                    &json!({"bridges": bridges, "ports": ports, "mirrors": mirrors}),
                ))
            } else {
                Ok(ctl::show_tree(&bridges, &ports, &mirrors))
            }
        }
        Command::Mirror(cmd) => mirror(&api, cmd, json).await,
        Command::Sg(cmd) => security_group(&api, cmd, json).await,
        Command::Conntrack {
            flush,
            port,
            bridge,
            protocol,
            address,
            limit,
        } => {
            let mut query = Vec::new();
            for (k, v) in [
                ("port", port),
                ("bridge", bridge),
                ("protocol", protocol),
                ("address", address),
                ("limit", limit.map(|n| n.to_string())),
            ] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", seg(&v)));
                }
            }
            let path = if query.is_empty() {
                "/v1/conntrack".to_owned()
            } else {
                format!("/v1/conntrack?{}", query.join("&"))
            };
            if flush {
                let v = send(&api, Method::DELETE, &path, None).await?;
                Ok(changed(
                    &v,
                    json,
                    format!("{} connections flushed", v["flushed"].as_u64().unwrap_or(0)),
                ))
            } else {
                let v = send(&api, Method::GET, &path, None).await?;
                Ok(shown(&v, json, ctl::connections_table))
            }
        }
        Command::Stats { interval } => {
            let (s, scope) = stats_over(&api, interval).await?;
            if args.json {
                Ok(serde_json::to_string_pretty(&s).expect("a snapshot serialises") + "\n")
            } else {
                Ok(ctl::stats_tables(&s, &scope))
            }
        }
        Command::Trace {
            port,
            src,
            dst,
            vlan,
            ethertype,
            ip_src,
            ip_dst,
            protocol,
            src_port,
            dst_port,
            tcp_flags,
            icmp_type,
            icmp_code,
        } => {
            let mut body = json!({"port": port, "src": src, "dst": dst});
            if let Some(v) = vlan {
                body["vlan"] = json!(v);
            }
            if let Some(t) = ethertype {
                body["ethertype"] = json!(t);
            }
            for (key, value) in [
                ("ip_src", ip_src.map(|v| json!(v))),
                ("ip_dst", ip_dst.map(|v| json!(v))),
                ("protocol", protocol.map(|v| json!(v))),
                ("src_port", src_port.map(|v| json!(v))),
                ("dst_port", dst_port.map(|v| json!(v))),
                ("tcp_flags", tcp_flags.map(|v| json!(v))),
                ("icmp_type", icmp_type.map(|v| json!(v))),
                ("icmp_code", icmp_code.map(|v| json!(v))),
            ] {
                if let Some(v) = value {
                    body[key] = v;
                }
            }
            let v = send(&api, Method::POST, "/v1/trace", Some(body)).await?;
            Ok(shown(&v, json, ctl::trace_text))
        }
        Command::Upgrade { deadline } => {
            let body = deadline.map(|d| json!({ "deadline_s": d }));
            let v = send(&api, Method::POST, "/v1/upgrade", body).await?;
            Ok(shown(&v, json, ctl::upgrade_text))
        }
        Command::Cores { interval } => {
            let (s, scope) = stats_over(&api, interval).await?;
            if args.json {
                Ok(serde_json::to_string_pretty(&s).expect("a snapshot serialises") + "\n")
            } else {
                Ok(ctl::cores_text(&s, &scope))
            }
        }
    }
}

/// The counters since start, or over `interval` seconds, and which it is.
async fn stats_over(
    api: &ApiClient,
    interval: Option<f64>,
) -> Result<(Snapshot, String), ClientError> {
    let first: Snapshot = api.get("/v1/stats").await?;
    Ok(match interval {
        Some(secs) => {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let second: Snapshot = api.get("/v1/stats").await?;
            (ctl::difference(&second, &first), format!("last {secs} s"))
        }
        None => (first, "since start".to_owned()),
    })
}

/// The API's JSON, pretty, for --json.
fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON serialises") + "\n"
}

/// Sends a request and decodes its JSON answer (Null when empty).
async fn send(
    api: &ApiClient,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, ClientError> {
    let bytes = api.call(method, path, body).await?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
        path: path.to_owned(),
        source,
    })
}

/// The API socket of the shipped systemd unit (`--api-socket ${RUNTIME_DIRECTORY}/api.sock`).
const DEFAULT_API_SOCKET: &str = "/run/vringswitch/api.sock";

/// The API to talk to: `given`, else the daemon's unix socket `socket` when it takes this
/// user's connections (the shipped unit takes changes only there, as ovs-vsctl finds
/// db.sock; a user outside its group still reads over TCP), else TCP on localhost.
fn endpoint(given: Option<Endpoint>, socket: &Path) -> Endpoint {
    given.unwrap_or_else(|| {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            Endpoint::Unix(socket.to_path_buf())
        } else {
            Endpoint::Tcp(format!(
                "127.0.0.1:{}",
                vringswitch_control::client::DEFAULT_API_PORT
            ))
        }
    })
}

/// The object at `path`, or `None` if there is none.
async fn found(api: &ApiClient, path: &str) -> Result<Option<Value>, ClientError> {
    match send(api, Method::GET, path, None).await {
        Ok(v) => Ok(Some(v)),
        Err(ClientError::Api { status, .. }) if status == hyper::StatusCode::NOT_FOUND => Ok(None),
        Err(e) => Err(e),
    }
}

/// A usage error: a `set` that names nothing to change (`flags`: what it takes).
fn nothing_to_change(flags: &str) -> ! {
    use clap::CommandFactory;
    Args::command()
        .error(
            clap::error::ErrorKind::MissingRequiredArgument,
            format!("nothing to change: give {flags}"),
        )
        .exit()
}

/// `add --may-exist` of a bridge or port that exists: no error only if it is as asked, as
/// ovs-vsctl's --may-exist. Each setting asked is compared with what is there (settings
/// left out are not); of the external IDs, each key asked (others may be there too).
fn same_as_asked(what: &str, name: &str, asked: &Value, there: &Value) -> Result<(), ClientError> {
    let mut asked = asked.clone();
    let mut differ: Vec<String> = Vec::new();
    if let Some(Value::Object(ids)) = asked.as_object_mut().and_then(|o| o.remove("external_ids")) {
        for (key, want) in ids {
            let has = &there["external_ids"][&key];
            if *has != want {
                let has = has.as_str().map_or("none".to_owned(), |h| format!("{h:?}"));
                differ.push(format!("external_ids {key} {has}, not {want}"));
            }
        }
    }
    let settings: Vec<String> = asked
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, value)| key.as_str() != "name" && there.get(key.as_str()) != Some(*value))
        .map(|(key, value)| {
            let has = there.get(key.as_str()).map_or("none".to_owned(), |v| {
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            });
            let want = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            format!("{key} {has}, not {want}")
        })
        .collect();
    differ.splice(0..0, settings);
    if differ.is_empty() {
        return Ok(());
    }
    Err(ClientError::Refused(format!(
        "{what} {name} already exists, otherwise: {}",
        differ.join("; ")
    )))
}

/// A deletion's answer, with a 404 made `None` when `if_exists` says it is no error.
fn if_found(
    if_exists: bool,
    answer: Result<Value, ClientError>,
) -> Result<Option<Value>, ClientError> {
    match answer {
        Ok(v) => Ok(Some(v)),
        Err(ClientError::Api { status, .. })
            if if_exists && status == hyper::StatusCode::NOT_FOUND =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// What a query prints: the API's JSON with --json, else `table` of it.
fn shown(v: &Value, json: bool, table: fn(&Value) -> String) -> String {
    if json {
        pretty(v)
    } else {
        table(v)
    }
}

/// What a change prints: the API's answer with --json, else `done`.
fn changed(v: &Value, json: bool, done: String) -> String {
    if json && !v.is_null() {
        pretty(v)
    } else {
        done + "\n"
    }
}

async fn mirror(api: &ApiClient, cmd: MirrorCmd, json: bool) -> Result<String, ClientError> {
    Ok(match cmd {
        MirrorCmd::List => {
            let v = send(api, Method::GET, "/v1/mirrors", None).await?;
            shown(&v, json, ctl::mirrors_table)
        }
        MirrorCmd::Show { name } => {
            let v = send(
                api,
                Method::GET,
                &format!("/v1/mirrors/{}", seg(&name)),
                None,
            )
            .await?;
            shown(&v, json, |m| {
                ctl::mirrors_table(&Value::Array(vec![m.clone()]))
            })
        }
        MirrorCmd::Add {
            name,
            ports,
            output,
            direction,
            may_exist,
        } => {
            let body =
                json!({"name": name, "ports": ports, "output": output, "direction": direction});
            if may_exist {
                if let Some(there) = found(api, &format!("/v1/mirrors/{}", seg(&name))).await? {
                    return same_as_asked("mirror", &name, &body, &there)
                        .map(|()| format!("mirror {name} already exists\n"));
                }
            }
            let v = send(api, Method::POST, "/v1/mirrors", Some(body)).await?;
            changed(
                &v,
                json,
                format!("mirror {name} added: {} -> {output}", ports.join(",")),
            )
        }
        MirrorCmd::Del { name, if_exists } => {
            let path = format!("/v1/mirrors/{}", seg(&name));
            match if_found(if_exists, send(api, Method::DELETE, &path, None).await)? {
                Some(v) => changed(&v, json, format!("mirror {name} deleted")),
                None => format!("no mirror {name}: nothing to delete\n"),
            }
        }
    })
}

async fn security_group(api: &ApiClient, cmd: SgCmd, json: bool) -> Result<String, ClientError> {
    let path = |name: &str| format!("/v1/security-groups/{}", seg(name));
    Ok(match cmd {
        SgCmd::List => {
            let groups = send(api, Method::GET, "/v1/security-groups", None).await?;
            let ports = send(api, Method::GET, "/v1/ports", None).await?;
            if json {
                pretty(&groups)
            } else {
                ctl::groups_table(&groups, &ports)
            }
        }
        SgCmd::Show { name } => {
            let v = send(api, Method::GET, &path(&name), None).await?;
            shown(&v, json, ctl::rules_table)
        }
        SgCmd::Add { name, stateless } => {
            let body = json!({"name": name, "stateful": !stateless, "rules": []});
            let v = send(api, Method::POST, "/v1/security-groups", Some(body)).await?;
            changed(
                &v,
                json,
                format!("security group {name} added (no rules yet)"),
            )
        }
        SgCmd::RuleAdd {
            group,
            direction,
            ethertype,
            protocol,
            dst_port,
            icmp_type,
            icmp_code,
            remote_ip,
            remote_group,
        } => {
            let mut g = send(api, Method::GET, &path(&group), None).await?;
            let mut rule = json!({"direction": direction});
            if let Some(e) = ethertype {
                rule["ethertype"] = json!(e);
            }
            if let Some(p) = &protocol {
                rule["protocol"] = match p.parse::<u8>() {
                    Ok(n) => json!(n),
                    Err(_) => json!(p),
                };
            }
            let range = dst_port.or(icmp_type.map(|t| (t, icmp_code.unwrap_or(u16::MAX))));
            if let Some((lo, hi)) = range {
                rule["port_range_min"] = json!(lo);
                if hi != u16::MAX || dst_port.is_some() {
                    rule["port_range_max"] = json!(hi);
                }
            }
            if let Some(r) = remote_ip {
                rule["remote_ip_prefix"] = json!(r);
            }
            if let Some(r) = remote_group {
                rule["remote_group"] = json!(r);
            }
            let rules = g["rules"].as_array_mut();
            match rules {
                Some(rules) => rules.push(rule),
                None => g["rules"] = json!([rule]),
            }
            let v = send(api, Method::PUT, &path(&group), Some(g)).await?;
            let n = v["rules"].as_array().map_or(0, Vec::len);
            changed(
                &v,
                json,
                format!("rule {n} added to security group {group}"),
            )
        }
        SgCmd::RuleDel { group, number } => {
            let mut g = send(api, Method::GET, &path(&group), None).await?;
            let rules = g["rules"].as_array_mut();
            match rules {
                Some(rules) if (1..=rules.len()).contains(&number) => {
                    rules.remove(number - 1);
                }
                other => {
                    return Err(ClientError::Refused(format!(
                        "security group {group} has {} rules: there is no rule {number}",
                        other.map_or(0, |r| r.len())
                    )))
                }
            }
            let v = send(api, Method::PUT, &path(&group), Some(g)).await?;
            changed(
                &v,
                json,
                format!("rule {number} removed from security group {group}"),
            )
        }
        SgCmd::Del { name, if_exists } => {
            match if_found(
                if_exists,
                send(api, Method::DELETE, &path(&name), None).await,
            )? {
                Some(v) => changed(&v, json, format!("security group {name} deleted")),
                None => format!("no security group {name}: nothing to delete\n"),
            }
        }
    })
}

async fn log(api: &ApiClient, cmd: LogCmd, json: bool) -> Result<String, ClientError> {
    let body = match cmd {
        LogCmd::Show => {
            let v = send(api, Method::GET, "/v1/log", None).await?;
            return Ok(shown(&v, json, ctl::log_table));
        }
        LogCmd::Set { settings } => {
            let mut body = json!({"modules": {}});
            for (module, level) in settings {
                match module {
                    None => body["default"] = json!(level),
                    Some(m) => body["modules"][m] = json!(level),
                }
            }
            body
        }
        LogCmd::Reset => json!({"reset": true}),
    };
    let v = send(api, Method::PATCH, "/v1/log", Some(body)).await?;
    Ok(shown(&v, json, ctl::log_table))
}

async fn bridge(api: &ApiClient, cmd: BridgeCmd, json: bool) -> Result<String, ClientError> {
    Ok(match cmd {
        BridgeCmd::List => {
            let v = send(api, Method::GET, "/v1/bridges", None).await?;
            shown(&v, json, ctl::bridges_table)
        }
        BridgeCmd::Show { name } => {
            let v = send(
                api,
                Method::GET,
                &format!("/v1/bridges/{}", seg(&name)),
                None,
            )
            .await?;
            shown(&v, json, ctl::bridge_detail)
        }
        BridgeCmd::Add {
            name,
            fdb_aging,
            fdb_max_learned,
            may_exist,
            ids,
        } => {
            let path = format!("/v1/bridges/{}", seg(&name));
            let mut body = json!({ "name": name });
            if let Some(a) = fdb_aging {
                body["fdb_aging_s"] = json!(a);
            }
            if let Some(n) = fdb_max_learned {
                body["fdb_max_learned"] = json!(n);
            }
            if let Some(ids) = ids.json() {
                body["external_ids"] = ids;
            }
            if may_exist {
                if let Some(there) = found(api, &path).await? {
                    return same_as_asked("bridge", &name, &body, &there)
                        .map(|()| format!("bridge {name} already exists\n"));
                }
            }
            let v = send(api, Method::POST, "/v1/bridges", Some(body)).await?;
            changed(&v, json, format!("bridge {name} added"))
        }
        BridgeCmd::Set {
            name,
            fdb_aging,
            fdb_max_learned,
            ids,
            remove_ids,
        } => {
            let mut body = json!({});
            if let Some(a) = fdb_aging {
                body["fdb_aging_s"] = json!(a);
            }
            if let Some(n) = fdb_max_learned {
                body["fdb_max_learned"] = json!(n);
            }
            if let Some(p) = ids.patch(&remove_ids) {
                body["external_ids"] = p;
            }
            if body.as_object().is_some_and(|o| o.is_empty()) {
                nothing_to_change(
                    "--fdb-aging, --fdb-max-learned, --external-id or --remove-external-id",
                );
            }
            let path = format!("/v1/bridges/{}", seg(&name));
            let v = send(api, Method::PATCH, &path, Some(body)).await?;
            changed(&v, json, format!("bridge {name} changed"))
        }
        BridgeCmd::Del {
            name,
            if_exists,
            with_ports,
        } => {
            let mut path = format!("/v1/bridges/{}", seg(&name));
            if with_ports {
                path.push_str("?with_ports=true");
            }
            match if_found(if_exists, send(api, Method::DELETE, &path, None).await)? {
                Some(v) => changed(&v, json, format!("bridge {name} deleted")),
                None => format!("no bridge {name}: nothing to delete\n"),
            }
        }
    })
}

async fn port(api: &ApiClient, cmd: PortCmd, json: bool) -> Result<String, ClientError> {
    Ok(match cmd {
        PortCmd::List => {
            let v = send(api, Method::GET, "/v1/ports", None).await?;
            shown(&v, json, ctl::ports_table)
        }
        PortCmd::Show { name } => {
            let v = send(api, Method::GET, &format!("/v1/ports/{}", seg(&name)), None).await?;
            shown(&v, json, ctl::port_detail)
        }
        PortCmd::Add {
            name,
            bridge,
            kind,
            socket,
            mode,
            queues,
            ifname,
            mtu,
            queue,
            xdp_mode,
            vni,
            local,
            udp_port,
            control,
            remotes,
            offloads,
            vlan,
            allow_mac,
            security_groups,
            allowed_ips,
            fdb_max_learned,
            police,
            set,
            may_exist,
            admin,
            ids,
        } => {
            let mut body = json!({"name": name, "bridge": bridge, "type": kind});
            if let Some(ids) = ids.json() {
                body["external_ids"] = ids;
            }
            if let Some(s) = socket {
                body["socket"] = json!(s);
            }
            // Given as asked: the daemon says which settings a port of the type takes.
            for (key, value) in [
                ("mode", mode.map(|m| json!(m))),
                ("queues", queues.map(|q| json!(q))),
                ("ifname", ifname.map(|i| json!(i))),
                ("mtu", mtu.map(|m| json!(m))),
                ("queue", queue.map(|q| json!(q))),
                ("xdp_mode", xdp_mode.map(|m| json!(m))),
                ("vni", vni.map(|v| json!(v))),
                ("local", local.map(|l| json!(l))),
                ("udp_port", udp_port.map(|u| json!(u))),
                ("control", control.map(|c| json!(c))),
                ("remotes", remotes.map(|r| json!(r))),
                ("offloads", offloads.map(|o| json!(o == "on"))),
            ] {
                if let Some(v) = value {
                    body[key] = v;
                }
            }
            for (key, value) in set {
                body[key] = value;
            }
            if let Some(v) = vlan.json() {
                body["vlan"] = v;
            }
            if let Some(macs) = allow_mac {
                body["allowed_macs"] = json!(macs);
            }
            if let Some(g) = security_groups {
                body["security_groups"] = json!(g);
            }
            if let Some(ips) = allowed_ips {
                body["allowed_ips"] = json!(ips);
            }
            if let Some(n) = fdb_max_learned {
                body["fdb_max_learned"] = json!(n);
            }
            police.add_to(&mut body);
            if let Some(a) = admin {
                body["admin"] = json!(a);
            }
            if may_exist {
                if let Some(there) = found(api, &format!("/v1/ports/{}", seg(&name))).await? {
                    return same_as_asked("port", &name, &body, &there)
                        .map(|()| format!("port {name} already exists\n"));
                }
            }
            let v = send(api, Method::POST, "/v1/ports", Some(body)).await?;
            let done = format!(
                "port {name} added, {}",
                v["words"]["summary"].as_str().unwrap_or("?")
            );
            changed(&v, json, done)
        }
        PortCmd::Set {
            name,
            bridge,
            vlan,
            no_vlan,
            allow_mac,
            no_mac_lock,
            security_groups,
            no_security_groups,
            allowed_ips,
            no_allowed_ips,
            fdb_max_learned,
            police,
            no_police_rx,
            no_police_tx,
            admin,
            ids,
            remove_ids,
            set,
        } => {
            let mut body = json!({});
            if !set.is_empty() {
                body["settings"] = Value::Object(set.into_iter().collect());
            }
            if let Some(p) = ids.patch(&remove_ids) {
                body["external_ids"] = p;
            }
            if let Some(b) = bridge {
                body["bridge"] = json!(b);
            }
            if let Some(v) = vlan.json() {
                body["vlan"] = v;
            } else if no_vlan {
                body["vlan"] = Value::Null;
            }
            if let Some(macs) = allow_mac {
                body["allowed_macs"] = json!(macs);
            } else if no_mac_lock {
                body["allowed_macs"] = Value::Null;
            }
            if let Some(g) = security_groups {
                body["security_groups"] = json!(g);
            } else if no_security_groups {
                body["security_groups"] = Value::Null;
            }
            if let Some(ips) = allowed_ips {
                body["allowed_ips"] = json!(ips);
            } else if no_allowed_ips {
                body["allowed_ips"] = Value::Null;
            }
            if let Some(n) = fdb_max_learned {
                body["fdb_max_learned"] = json!(n);
            }
            police.add_to(&mut body);
            for (key, off) in [("police_rx", no_police_rx), ("police_tx", no_police_tx)] {
                if off {
                    body[key] = Value::Null;
                }
            }
            if let Some(a) = admin {
                body["admin"] = json!(a);
            }
            if body.as_object().is_some_and(|o| o.is_empty()) {
                nothing_to_change(
                    "--bridge, --access, --trunk, --no-vlan, --allow-mac, --no-mac-lock, \
                     --fdb-max-learned, --police-rx, --police-tx, --no-police-rx, \
                     --no-police-tx, --admin, --external-id, --remove-external-id or --set",
                );
            }
            let v = send(
                api,
                Method::PATCH,
                &format!("/v1/ports/{}", seg(&name)),
                Some(body),
            )
            .await?;
            changed(&v, json, format!("port {name} changed"))
        }
        PortCmd::Del { name, if_exists } => {
            let path = format!("/v1/ports/{}", seg(&name));
            match if_found(if_exists, send(api, Method::DELETE, &path, None).await)? {
                Some(v) => changed(&v, json, format!("port {name} deleted")),
                None => format!("no port {name}: nothing to delete\n"),
            }
        }
    })
}

async fn fdb(api: &ApiClient, cmd: FdbCmd, json: bool) -> Result<String, ClientError> {
    Ok(match cmd {
        FdbCmd::Show { bridge } => {
            let v = send(
                api,
                Method::GET,
                &format!("/v1/bridges/{}/fdb", seg(&bridge)),
                None,
            )
            .await?;
            shown(&v, json, ctl::fdb_table)
        }
        FdbCmd::Add {
            bridge,
            mac,
            port,
            vlan,
        } => {
            let mut body = json!({"mac": mac, "port": port});
            if let Some(v) = vlan {
                body["vlan"] = json!(v);
            }
            let path = format!("/v1/bridges/{}/fdb", seg(&bridge));
            let v = send(api, Method::POST, &path, Some(body)).await?;
            changed(&v, json, format!("{mac} -> {port} added to {bridge}"))
        }
        FdbCmd::Del {
            bridge,
            mac,
            vlan,
            if_exists,
        } => {
            let mut path = format!("/v1/bridges/{}/fdb/{}", seg(&bridge), seg(&mac));
            if let Some(v) = vlan {
                path.push_str(&format!("?vlan={v}"));
            }
            match if_found(if_exists, send(api, Method::DELETE, &path, None).await)? {
                Some(v) => changed(&v, json, format!("{bridge}: entry {mac} deleted")),
                None => format!("{bridge}: no entry {mac}: nothing to delete\n"),
            }
        }
        FdbCmd::Flush { bridge, port } => {
            let path = match &port {
                Some(p) => format!("/v1/bridges/{}/fdb?port={}", seg(&bridge), seg(p)),
                None => format!("/v1/bridges/{}/fdb", seg(&bridge)),
            };
            let v = send(api, Method::DELETE, &path, None).await?;
            let what = port.map_or_else(
                || "all entries".to_owned(),
                |p| format!("port {p}'s entries"),
            );
            changed(&v, json, format!("{bridge}: {what} flushed"))
        }
    })
}

/// A name as one URL path segment or query value: unreserved characters as they are, the
/// rest percent-encoded.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The kinds of port, as `--type` takes them.
fn port_types() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        vringswitch_config::PortType::ALL.iter().map(|t| t.name()),
    )
}

/// `--set KEY=VALUE`: the value as JSON when it reads as JSON (a number, a boolean, a
/// list), else as text.
fn parse_setting(s: &str) -> Result<(String, Value), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("{s:?} names no setting"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_encoded_in_paths() {
        assert_eq!(super::seg("vm-1_a.b"), "vm-1_a.b");
        assert_eq!(super::seg("a/b?c&d"), "a%2Fb%3Fc%26d");
    }

    #[test]
    fn the_daemons_socket_is_found_when_no_api_is_given() {
        use vringswitch_control::client::Endpoint;
        let dir = std::env::temp_dir().join(format!("vringctl-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        let _ = std::fs::remove_file(&socket);
        let tcp = Endpoint::Tcp("127.0.0.1:9180".into());
        assert_eq!(super::endpoint(None, &socket), tcp);
        // A file that is no socket is not taken for one.
        std::fs::write(&socket, "").unwrap();
        assert_eq!(super::endpoint(None, &socket), tcp);
        std::fs::remove_file(&socket).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert_eq!(
            super::endpoint(None, &socket),
            Endpoint::Unix(socket.clone())
        );
        // Given, it is used as given.
        let given = Endpoint::Tcp("10.0.0.1:9180".into());
        assert_eq!(super::endpoint(Some(given.clone()), &socket), given);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn settings_are_read_as_json_when_they_are() {
        use serde_json::json;
        let set = |s| super::parse_setting(s).unwrap();
        assert_eq!(set("queue=3"), ("queue".into(), json!(3)));
        assert_eq!(set("offloads=false"), ("offloads".into(), json!(false)));
        assert_eq!(set("ifname=eth1"), ("ifname".into(), json!("eth1")));
        assert_eq!(set("socket=/run/a=b"), ("socket".into(), json!("/run/a=b")));
        assert!(super::parse_setting("queue").is_err());
        assert!(super::parse_setting("=3").is_err());
    }
}
