//! What the data path follows when the control plane has a gap: zebra stopped or crashed,
//! zebra restarted, the mirror made again. The routes in effect then are kept (stale) and
//! the data path forwards on them; what the kernel says meanwhile is added to them, never
//! taken from them. Once the control plane is back, they are kept for the hold time, or
//! until every one of them is back; then the kernel's routes are taken whole again, and
//! those that did not come back are dropped.
//!
//! And whether FRR runs: the pid files of zebra and bgpd name live processes of those
//! names. When bgpd dies first, zebra deletes the routes it had from the kernel: that is
//! FRR's cleanup, not a withdrawal, and the control holds them as for a dead zebra.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::routes::RemoteRoutes;

/// Routes kept over a gap.
#[derive(Debug, Clone)]
struct Kept {
    routes: RemoteRoutes,
    /// When the control plane came back, if it has.
    back: Option<Instant>,
}

/// The routes the data path follows: the kernel's, or kept ones over a gap.
#[derive(Debug)]
pub struct Follower {
    kept: Option<Kept>,
    hold: Duration,
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Every kept route came back.
    AllBack,
    /// The hold time passed; this many kept routes (MACs and flood entries) were dropped.
    HoldOver(usize),
}

impl Follower {
    pub fn new(hold: Duration) -> Follower {
        Follower { kept: None, hold }
    }

    /// How long kept routes stay once the control plane is back.
    pub fn hold(&self) -> Duration {
        self.hold
    }

    /// Whether routes are kept (stale).
    pub fn is_holding(&self) -> bool {
        self.kept.is_some()
    }

    /// Whether the control plane is gone (routes kept, not back yet).
    pub fn is_gone(&self) -> bool {
        self.kept.as_ref().is_some_and(|k| k.back.is_none())
    }

    /// The routes to follow, the kernel's being `routes`.
    pub fn effective(&self, routes: &RemoteRoutes) -> RemoteRoutes {
        let Some(k) = &self.kept else {
            return routes.clone();
        };
        let mut e = k.routes.clone();
        e.macs.extend(routes.macs.iter().map(|(&m, &v)| (m, v)));
        e.flood.extend(routes.flood.iter().copied());
        e
    }

    /// The control plane is gone: what is followed now (the kernel's being `routes`) is
    /// kept. Already holding, what is kept stays (and the hold waits again).
    pub fn lose(&mut self, routes: &RemoteRoutes) {
        let effective = self.effective(routes);
        self.kept = Some(Kept {
            routes: effective,
            back: None,
        });
    }

    /// The control plane is back (or came back unseen, or anew) at `now`: the hold starts.
    /// Without a gap before, what is followed now is kept from now on.
    pub fn back(&mut self, routes: &RemoteRoutes, now: Instant) {
        if self.kept.is_none() {
            self.lose(routes);
        }
        if let Some(k) = &mut self.kept {
            k.back = Some(now);
        }
    }

    /// Ends the hold if every kept route is among the kernel's `routes` (a MAC behind any
    /// end), or the hold time has passed since the control plane came back.
    pub fn settle(&mut self, routes: &RemoteRoutes, now: Instant) -> Option<Settled> {
        let k = self.kept.as_ref()?;
        let back = k.back?;
        // A MAC is back wherever it is now (it may have moved meanwhile).
        let all_back = k.routes.macs.keys().all(|m| routes.macs.contains_key(m))
            && k.routes.flood.is_subset(&routes.flood);
        let settled = if all_back {
            Settled::AllBack
        } else if now.saturating_duration_since(back) >= self.hold {
            let gone = k
                .routes
                .macs
                .keys()
                .filter(|m| !routes.macs.contains_key(*m))
                .count()
                + k.routes.flood.difference(&routes.flood).count();
            Settled::HoldOver(gone)
        } else {
            return None;
        };
        self.kept = None;
        Some(settled)
    }
}

/// What became of FRR since the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrrChange {
    /// As it was (running, or not).
    Same,
    /// It was running and is not (zebra or bgpd gone).
    Gone,
    /// It was not running and is.
    Back,
    /// Another zebra or bgpd runs than the last one seen: it restarted between two looks.
    Restarted,
}

/// The FRR daemons EVPN needs: zebra (the kernel's side) and bgpd (the routes).
const DAEMONS: [&str; 2] = ["zebra", "bgpd"];

/// Watches whether FRR runs, from its daemons' pid files.
#[derive(Debug)]
pub struct FrrProcesses {
    /// FRR's run directory: `zebra.pid`, `bgpd.pid`.
    dir: PathBuf,
    /// The process names looked for (FRR's; others in tests).
    names: [String; 2],
    last: Option<[u32; 2]>,
}

/// Whether process `pid` is alive and called `name` (not a zombie, not exiting).
fn alive(pid: u32, name: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the name within the parentheses, the state after them.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next();
    comm == name && !matches!(state, Some('Z' | 'X' | 'x'))
}

impl FrrProcesses {
    pub fn new(dir: PathBuf) -> FrrProcesses {
        Self::named(dir, DAEMONS.map(str::to_owned))
    }

    /// A watch of processes called `names` (whose pid files are `zebra.pid`, `bgpd.pid`).
    pub fn named(dir: PathBuf, names: [String; 2]) -> FrrProcesses {
        let mut w = FrrProcesses {
            dir,
            names,
            last: None,
        };
        w.last = w.running();
        w
    }

    /// The pids of zebra and bgpd, if both run.
    pub fn running(&self) -> Option<[u32; 2]> {
        let mut pids = [0; 2];
        for (i, d) in DAEMONS.iter().enumerate() {
            let pid: u32 = std::fs::read_to_string(self.dir.join(format!("{d}.pid")))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            if !alive(pid, &self.names[i]) {
                return None;
            }
            pids[i] = pid;
        }
        Some(pids)
    }

    /// Whether zebra runs now (bgpd may not).
    pub fn zebra_running(&self) -> bool {
        std::fs::read_to_string(self.dir.join("zebra.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .is_some_and(|pid| alive(pid, &self.names[0]))
    }

    /// Whether FRR ran when last looked at.
    pub fn was_running(&self) -> bool {
        self.last.is_some()
    }

    /// Looks again.
    pub fn check(&mut self) -> FrrChange {
        let now = self.running();
        let change = match (self.last, now) {
            (Some(_), None) => FrrChange::Gone,
            (None, Some(_)) => FrrChange::Back,
            (Some(a), Some(b)) if a != b => FrrChange::Restarted,
            _ => FrrChange::Same,
        };
        self.last = now;
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::Ipv4Addr;

    fn routes(macs: &[(u8, u8)], flood: &[u8]) -> RemoteRoutes {
        RemoteRoutes {
            macs: macs
                .iter()
                .map(|&(m, v)| ([2, 0, 0, 0, 0, m], Ipv4Addr::new(10, 0, 0, v)))
                .collect::<BTreeMap<_, _>>(),
            flood: flood
                .iter()
                .map(|&v| Ipv4Addr::new(10, 0, 0, v))
                .collect::<BTreeSet<_>>(),
        }
    }

    #[test]
    fn routes_are_kept_over_a_gap_added_to_and_taken_whole_once_all_are_back() {
        let t0 = Instant::now();
        let mut f = Follower::new(Duration::from_secs(30));
        let before = routes(&[(1, 2), (2, 3)], &[2, 3]);
        assert_eq!(f.effective(&before), before);
        f.lose(&before);
        assert!(f.is_holding() && f.is_gone());
        // The kernel's entries flushed; a new route meanwhile is added, a move taken.
        let now = routes(&[(2, 4), (5, 4)], &[4]);
        assert_eq!(
            f.effective(&now),
            routes(&[(1, 2), (2, 4), (5, 4)], &[2, 3, 4])
        );
        // Not settled while gone, whatever the time.
        assert_eq!(f.settle(&now, t0 + Duration::from_secs(999)), None);
        f.back(&now, t0);
        assert!(!f.is_gone());
        assert_eq!(f.settle(&now, t0 + Duration::from_secs(1)), None);
        // Everything kept is back (MAC 2 behind another end now): taken whole at once.
        let all = routes(&[(1, 2), (2, 4), (5, 4)], &[2, 3, 4]);
        assert_eq!(
            f.settle(&all, t0 + Duration::from_secs(2)),
            Some(Settled::AllBack)
        );
        assert!(!f.is_holding());
        assert_eq!(f.effective(&now), now);
    }

    #[test]
    fn kept_routes_that_do_not_come_back_are_dropped_when_the_hold_is_over() {
        let t0 = Instant::now();
        let mut f = Follower::new(Duration::from_secs(30));
        let before = routes(&[(1, 2), (2, 3)], &[2, 3]);
        f.lose(&before);
        f.back(&routes(&[], &[]), t0);
        let partly = routes(&[(1, 2)], &[2]);
        assert_eq!(f.settle(&partly, t0 + Duration::from_secs(29)), None);
        assert_eq!(f.effective(&partly), before);
        assert_eq!(
            f.settle(&partly, t0 + Duration::from_secs(30)),
            Some(Settled::HoldOver(2))
        );
        assert_eq!(f.effective(&partly), partly);
        // A restart seen only as a new pid: held from what was followed, timer running.
        f.back(&partly, t0);
        assert!(f.is_holding() && !f.is_gone());
        assert_eq!(f.effective(&routes(&[], &[])), partly);
    }

    #[test]
    fn frr_is_watched_through_its_pid_files_and_process_names() {
        let dir = std::env::temp_dir().join(format!("vs-frr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        let me = me.trim_end().to_owned();
        let pid = std::process::id().to_string();
        let write = |d: &str, s: &str| std::fs::write(dir.join(format!("{d}.pid")), s).unwrap();
        let mut w = FrrProcesses::named(dir.clone(), [me.clone(), me.clone()]);
        assert!(!w.was_running());
        assert_eq!(w.check(), FrrChange::Same);
        // zebra alone is not FRR running: bgpd too.
        assert!(!w.zebra_running());
        write("zebra", &pid);
        assert!(w.zebra_running());
        assert_eq!(w.check(), FrrChange::Same);
        write("bgpd", &format!("{pid}\n"));
        assert_eq!(w.check(), FrrChange::Back);
        assert!(w.was_running());
        assert_eq!(w.check(), FrrChange::Same);
        // Another live process, not called so: not bgpd.
        write("bgpd", "1");
        assert_eq!(w.check(), FrrChange::Gone);
        write("bgpd", &pid);
        assert_eq!(w.check(), FrrChange::Back);
        // A pid that runs nothing, or garbage.
        write("zebra", "999999999");
        assert_eq!(w.check(), FrrChange::Gone);
        write("zebra", "zebra");
        assert_eq!(w.check(), FrrChange::Same);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!FrrProcesses::new(dir).was_running());
    }

    #[test]
    fn a_zombie_or_another_name_is_not_alive() {
        let mut child = std::process::Command::new("sleep")
            .arg("0")
            .spawn()
            .unwrap();
        let pid = child.id();
        // Exited, not reaped yet: a zombie.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!alive(pid, "sleep"));
        child.wait().unwrap();
        assert!(!alive(pid, "sleep"));
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(alive(std::process::id(), me.trim_end()));
        assert!(!alive(std::process::id(), "zebra"));
    }
}
