//! vhost-user ports handed from one forwarding engine to another within one process, as a
//! hitless upgrade hands them from the old daemon to the new (docs/architecture.md,
//! "Hitless upgrade"): each VM's connection is carried on without its socket closing, and
//! the frames in flight are neither lost nor delivered twice.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vringswitch_ports::vhost_user::connection::{SocketMode, VhostUserPortConfig};
use vringswitch_ports::vhost_user::VhostUserPort;
use vringswitch_ports::PortHandle;
use vringswitch_switch::fdb::Fdb;
use vringswitch_switch::{BridgeRt, Switch, SwitchConfig, Topology};
use vringswitch_tests::frontend::{TestVm, VmOptions};
use vringswitch_tests::netns::plain_port;
use vringswitch_tests::{frame, mac, wait_until};

const T: Duration = Duration::from_secs(10);

/// A switch with one worker and bridge br0 holding ports `a` (id 0) and `b` (id 1).
struct Engine {
    switch: Arc<Switch>,
    workers: Vec<std::thread::JoinHandle<()>>,
    handles: Vec<Arc<PortHandle>>,
}

impl Engine {
    /// The switch and its ports; no worker runs until [`Self::start`].
    fn new() -> Engine {
        let switch = Switch::new(&SwitchConfig {
            cores: vec![1],
            burst: 32,
            idle_poll: Duration::from_micros(200),
        })
        .unwrap();
        let handles: Vec<_> = ["a", "b"]
            .iter()
            .enumerate()
            .map(|(id, name)| Arc::new(PortHandle::new(id as u32, name, 1)))
            .collect();
        switch.set_topology(Topology {
            bridges: vec![BridgeRt {
                name: "br0".into(),
                fdb: Arc::new(Fdb::new(300)),
                ports: vec![0, 1],
                guarded: false,
            }],
            ports: handles.iter().map(|h| Some(plain_port(h, 0))).collect(),
            conntrack: None,
        });
        Engine {
            switch,
            workers: Vec::new(),
            handles,
        }
    }

    fn start(mut self) -> Engine {
        self.workers = self.switch.start_workers().unwrap();
        self
    }

    fn stop(mut self) {
        self.switch.stop();
        for w in self.workers.drain(..) {
            w.join().unwrap();
        }
    }
}

fn config(socket: &Path) -> VhostUserPortConfig {
    VhostUserPortConfig {
        socket: socket.to_owned(),
        mode: SocketMode::Server,
        queue_pairs: 1,
        offloads: true,
    }
}

/// The 40 frames `a` sends in round `round`, each with its own payload.
fn round_frames(round: u8) -> Vec<Vec<u8>> {
    (0..40u8)
        .map(|i| frame(mac(2), mac(1), 100, round.wrapping_mul(40).wrapping_add(i)))
        .collect()
}

#[test]
fn connections_handed_over_carry_on_unaware_and_lose_no_frame() {
    let dir = std::env::temp_dir().join(vringswitch_tests::unique_name("vringswitch-handover"));
    let sockets = [dir.join("a.sock"), dir.join("b.sock")];
    let mut engine = Engine::new().start();
    let mut ports: Vec<VhostUserPort> = engine
        .handles
        .iter()
        .zip(&sockets)
        .map(|(h, s)| VhostUserPort::start(h.clone(), config(s)).unwrap())
        .collect();
    let mut a = TestVm::connect(&sockets[0], mac(1), VmOptions::default());
    let mut b = TestVm::connect(&sockets[1], mac(2), VmOptions::default());
    wait_until(T, "both ports ready", || {
        engine.handles.iter().all(|h| h.is_ready()).then_some(())
    });
    // Every receive buffer of the whole test, posted now: after a handover the VM has no
    // reason to kick its RX ring again, and the new engine must serve it all the same.
    b.post_rx(TestVm::rx(0), 200, 2048);
    a.post_rx(TestVm::rx(0), 16, 2048);
    // b is learnt, so that a's frames go to b alone.
    b.send(TestVm::tx(0), &frame(mac(1), mac(2), 60, 0));
    a.expect_frames(TestVm::rx(0), 1, T);

    for round in 0..4u8 {
        // Frames in flight while the ports change hands.
        let sent = round_frames(round);
        a.offer_quietly(TestVm::tx(0), &sent);
        a.kick(TestVm::tx(0));
        // As a daemon hands over: its workers finish their bursts and stop, so that every
        // frame they took is delivered; then the ports let go, and the new engine takes
        // every one over before its workers start.
        let old = std::mem::replace(&mut engine, Engine::new());
        old.switch.stop();
        let handed: Vec<_> = ports
            .iter_mut()
            .map(|p| p.hand_over().expect("the port is handed over"))
            .collect();
        assert!(old
            .handles
            .iter()
            .all(|h| !h.is_ready() && !h.is_connected()));
        old.stop();
        ports = engine
            .handles
            .iter()
            .zip(&sockets)
            .zip(handed)
            .map(|((h, s), handed)| {
                assert!(handed.listener.is_some() && handed.connection.is_some());
                let (port, replayed) = VhostUserPort::take_over(h.clone(), config(s), handed)
                    .expect("the port is taken over");
                replayed.expect("the connection is set up again");
                port
            })
            .collect();
        assert!(engine.handles.iter().all(|h| h.is_ready()));
        engine = engine.start();
        let got = b.expect_frames(TestVm::rx(0), 40, T);
        let got: Vec<_> = got.into_iter().map(|r| r.frame).collect();
        assert_eq!(got, sent, "round {round}: every frame once, in order");
        a.wait_tx_done(TestVm::tx(0), T);
        assert!(engine.handles.iter().all(|h| h.is_connected()));
    }
    // Both directions still go, and each VM's protocol connection is answered by the
    // handler of the last engine, through the socket it opened first.
    b.send(TestVm::tx(0), &frame(mac(1), mac(2), 80, 9));
    let back = a.expect_frames(TestVm::rx(0), 1, T);
    assert_eq!(back[0].frame, frame(mac(1), mac(2), 80, 9));
    use vhost::VhostBackend;
    assert_eq!(
        a.frontend.get_features().unwrap() & 1 << 32,
        1 << 32,
        "GET_FEATURES answered"
    );
    for p in &mut ports {
        p.stop();
    }
    engine.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_port_whose_vm_migrates_is_not_handed_over_and_serves_on() {
    let dir = std::env::temp_dir().join(vringswitch_tests::unique_name("vringswitch-handover"));
    let sockets = [dir.join("a.sock"), dir.join("b.sock")];
    let engine = Engine::new().start();
    let mut ports: Vec<VhostUserPort> = engine
        .handles
        .iter()
        .zip(&sockets)
        .map(|(h, s)| VhostUserPort::start(h.clone(), config(s)).unwrap())
        .collect();
    let migrating = VmOptions {
        migration: true,
        ..VmOptions::default()
    };
    let mut a = TestVm::connect(&sockets[0], mac(1), migrating);
    let mut b = TestVm::connect(&sockets[1], mac(2), VmOptions::default());
    b.post_rx(TestVm::rx(0), 64, 2048);
    let _log = a.start_dirty_log();
    let refused = ports[0]
        .hand_over()
        .expect_err("a migrating VM's port is kept");
    assert!(refused.contains("migrated"), "{refused}");
    // Nothing changed: the port serves on, and is handed over once the migration ends.
    a.send(TestVm::tx(0), &frame(mac(2), mac(1), 60, 1));
    b.expect_frames(TestVm::rx(0), 1, T);
    a.stop_dirty_log();
    let handed = ports[0]
        .hand_over()
        .expect("handed over after the migration");
    assert!(handed.connection.is_some());
    // A port no VM is connected to hands over its listening socket alone, and the port
    // that takes it over serves the VM that connects next.
    drop(b);
    wait_until(T, "b's disconnect", || {
        (!engine.handles[1].is_connected()).then_some(())
    });
    let handed_b = ports[1].hand_over().expect("an idle port is handed over");
    assert!(handed_b.listener.is_some() && handed_b.connection.is_none());
    assert!(sockets[1].exists(), "the socket file stays");
    let next = Arc::new(PortHandle::new(1, "b", 1));
    let (mut port_b, replayed) =
        VhostUserPort::take_over(next.clone(), config(&sockets[1]), handed_b).unwrap();
    replayed.unwrap();
    let _b = TestVm::connect(&sockets[1], mac(2), VmOptions::default());
    wait_until(T, "the VM served by the new port", || {
        next.is_ready().then_some(())
    });
    port_b.stop();
    drop(handed);
    engine.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A daemon starting from a handover that takes a port over and then fails on another
/// (what it was handed for it does not read) returns an error and hangs up on no VM: the
/// old process takes every port back, and the VM's connection must still be there for it.
#[test]
fn a_daemon_that_fails_partway_through_a_handover_hangs_up_on_no_vm() {
    use std::collections::HashMap;
    use vringswitch_control::daemon::{Daemon, DaemonOptions, Handed};
    use vringswitch_control::handover::Carried;
    use vringswitch_ports::port::HandedPort;
    use vringswitch_tests::layout::{tap, Layout};

    let dir = std::env::temp_dir().join(vringswitch_tests::unique_name("vringswitch-handover"));
    let socket = dir.join("a.sock");
    let handle = Arc::new(PortHandle::new(0, "a", 1));
    let mut old = VhostUserPort::start(handle.clone(), config(&socket)).unwrap();
    let vm = TestVm::connect(&socket, mac(1), VmOptions::default());
    wait_until(T, "the VM's rings", || handle.is_ready().then_some(()));
    let handed_a = old.hand_over().expect("handed over");
    let toml = Layout::new()
        .bridge("br0")
        .port(vringswitch_tests::setup::server_port(&dir, "a", "br0", 1))
        .port(tap("up0", "br0", "vsnever0"))
        .toml();
    let config = vringswitch_config::Config::parse(&toml, &dir.join("x.toml")).unwrap();
    let carried = Carried {
        pid: std::process::id(),
        saved: vringswitch_control::state_file::from_config(&config),
        clock_secs: 0,
        bridges: Vec::new(),
        ports: Vec::new(),
        workers: Vec::new(),
        lock_files: 0,
        api_tcp: false,
        api_unix: None,
    };
    let mut ports = HashMap::new();
    ports.insert(
        "a".to_owned(),
        vringswitch_ports::vhost_user::carry::write(handed_a),
    );
    // What no TAP port wrote.
    ports.insert(
        "up0".to_owned(),
        HandedPort {
            data: vec![7, 7, 7],
            fds: Vec::new(),
        },
    );
    let handed = Handed {
        carried,
        locks: Vec::new(),
        ports,
        connections: Vec::new(),
    };
    let failed = Daemon::start_handed(&config, DaemonOptions::default(), handed);
    let e = failed.err().expect("the handover fails on up0").to_string();
    assert!(e.contains("up0"), "{e}");
    // Port a was taken over before up0 failed: its VM's connection is still open, and
    // answered (in this test process the daemon left as it was still serves it).
    use vhost::VhostBackend;
    vm.frontend
        .get_features()
        .expect("the VM's connection was not hung up on");
    let _ = std::fs::remove_dir_all(&dir);
}
