//! FRR (zebra, bfdd, bgpd) in a network namespace, as the BGP EVPN speaker of a test
//! "host": an iBGP full mesh in AS 65000 over the underlay, `timers bgp 3 9`, BFD on each
//! session (bfdd's default 300 ms x 3) and `advertise-all-vni` in the L2VPN EVPN family.
//! Each daemon runs in FRR's pathspace for the namespace (`-N NS`: configuration in
//! /etc/frr/NS, sockets and pid files in /var/run/frr/NS). Needs Debian's `frr` package.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// FRR's daemons, as Debian installs them.
const DAEMONS: &str = "/usr/lib/frr";

/// Fails the test, saying how to install FRR, unless it is there.
pub fn require_frr() {
    assert!(
        Path::new(DAEMONS).join("zebra").exists() && Path::new(DAEMONS).join("bgpd").exists(),
        "FRR is not installed: apt-get install frr (Debian's frr 8.4 has zebra, bgpd and bfdd)"
    );
}

/// The FRR daemons of one namespace; killed (SIGKILL) on drop.
pub struct Frr {
    pub netns: String,
    conf: PathBuf,
    run: PathBuf,
    local: Ipv4Addr,
    peers: Vec<Ipv4Addr>,
}

/// The daemons, in the order they start (zebra first: the others connect to it).
const ORDER: [&str; 3] = ["zebra", "bfdd", "bgpd"];

impl Frr {
    /// Writes the configuration of a speaker at `local` peering with `peers`, and starts
    /// zebra, bfdd and bgpd in `netns`.
    pub fn start(netns: &str, local: Ipv4Addr, peers: &[Ipv4Addr]) -> Frr {
        require_frr();
        let conf = PathBuf::from(format!("/etc/frr/{netns}"));
        let run = PathBuf::from(format!("/var/run/frr/{netns}"));
        for d in [&conf, &run] {
            std::fs::create_dir_all(d).unwrap();
            chown_frr(d);
        }
        let mut bgp = format!(
            "frr defaults datacenter\nhostname {netns}\nlog file {run}/frr.log\n!\n\
             router bgp 65000\n bgp router-id {local}\n no bgp default ipv4-unicast\n \
             timers bgp 3 9\n",
            run = run.display()
        );
        for p in peers {
            bgp.push_str(&format!(
                " neighbor {p} remote-as 65000\n neighbor {p} bfd\n neighbor {p} timers connect 1\n"
            ));
        }
        bgp.push_str(" !\n address-family l2vpn evpn\n");
        for p in peers {
            bgp.push_str(&format!("  neighbor {p} activate\n"));
        }
        bgp.push_str("  advertise-all-vni\n exit-address-family\n!\n");
        let write = |name: &str, text: &str| {
            let f = conf.join(name);
            std::fs::write(&f, text).unwrap();
            chown_frr(&f);
        };
        write("zebra.conf", &format!("hostname {netns}\n"));
        write("bfdd.conf", &format!("hostname {netns}\n"));
        write("bgpd.conf", &bgp);
        write("vtysh.conf", "");
        let frr = Frr {
            netns: netns.to_owned(),
            conf,
            run,
            local,
            peers: peers.to_vec(),
        };
        frr.start_daemons();
        frr
    }

    fn start_daemons(&self) {
        for d in ORDER {
            if self.pid(d).is_some() {
                continue;
            }
            // Left by a daemon killed before: removed, or the new one refuses to start.
            let _ = std::fs::remove_file(self.pid_file(d));
            let out = Command::new("ip")
                .args(["netns", "exec", &self.netns])
                .arg(Path::new(DAEMONS).join(d))
                .args(["-d", "-N", &self.netns, "-f"])
                .arg(self.conf.join(format!("{d}.conf")))
                .arg("-i")
                .arg(self.pid_file(d))
                .args(["-P", "0"])
                .output()
                .expect("run an FRR daemon");
            assert!(
                out.status.success(),
                "{d} in {}: {}",
                self.netns,
                String::from_utf8_lossy(&out.stderr)
            );
            wait(Duration::from_secs(10), &format!("{d}'s pid file"), || {
                self.pid(d).is_some()
            });
        }
    }

    /// The run directory (pid files), for the daemon's `evpn.frr_run_dir`.
    pub fn run_dir(&self) -> &Path {
        &self.run
    }

    fn pid_file(&self, daemon: &str) -> PathBuf {
        self.run.join(format!("{daemon}.pid"))
    }

    /// The pid of `daemon` if it runs.
    pub fn pid(&self, daemon: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file(daemon))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// Kills every daemon at once with SIGKILL, as systemd kills a service's processes:
    /// a crash, zebra's kernel entries stay behind.
    pub fn kill(&self) {
        self.kill_only(&ORDER);
    }

    /// Kills `daemons` at once with SIGKILL.
    pub fn kill_only(&self, daemons: &[&str]) {
        let pids: Vec<String> = daemons
            .iter()
            .filter_map(|d| self.pid(d))
            .map(|p| p.to_string())
            .collect();
        if pids.is_empty() {
            return;
        }
        let _ = Command::new("kill").arg("-9").args(&pids).status();
        for pid in &pids {
            wait(Duration::from_secs(5), "FRR's daemons to die", || {
                !Path::new(&format!("/proc/{pid}")).exists()
            });
        }
    }

    /// Starts the daemons that do not run (after [`Frr::kill`]).
    pub fn restart(&self) {
        self.start_daemons();
    }

    /// Runs `vtysh -c command` in the namespace; its output.
    pub fn vtysh(&self, command: &str) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "vtysh",
                "-N",
                &self.netns,
                "-c",
                command,
            ])
            .output()
            .expect("run vtysh");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until every BGP session is established.
    pub fn wait_established(&self, within: Duration) {
        wait(within, &format!("{}'s BGP sessions", self.netns), || {
            let out = self.vtysh("show bgp neighbors json");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            self.peers
                .iter()
                .all(|p| v[p.to_string()]["bgpState"] == "Established")
        });
    }

    /// This speaker's address.
    pub fn local(&self) -> Ipv4Addr {
        self.local
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.conf);
        let _ = std::fs::remove_dir_all(&self.run);
    }
}

fn chown_frr(p: &Path) {
    let _ = Command::new("chown").arg("frr:frr").arg(p).status();
}

fn wait(within: Duration, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
