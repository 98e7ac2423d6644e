//! Stands in for a new vringswitch binary in the upgrade tests. Started by the running
//! daemon with its arguments and `--handover-fd N`, it speaks the handover protocol by
//! hand, as a file beside it (`<its path>.mode`) says:
//!
//! - `versions A B`: greets with handover versions A to B only (a release that speaks no
//!   version in common), then waits for the answer;
//! - `refuse-state`: greets with version 1, says it is prepared, takes the whole state
//!   and every port, then refuses them (as a new binary that cannot use what it got);
//! - `crash-after-state`: the same, but exits without a word once it has everything (as
//!   a new binary that crashes while taking over).
//!
//! It prints what it did on standard error, which the test finds in the daemon's log.

use std::time::Duration;

use vringswitch_ports::fd_channel::{self, Limits};

const HELLO: u16 = 1;
const REFUSE: u16 = 2;
const PREPARED: u16 = 3;
const SENT: u16 = 6;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let fd: i32 = args
        .iter()
        .position(|a| a == "--handover-fd")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .expect("--handover-fd N");
    let exe = std::env::current_exe().expect("its own path");
    let mode_file = format!("{}.mode", exe.display());
    let mode = std::fs::read_to_string(&mode_file)
        .unwrap_or_else(|e| panic!("vs-fake-upgrade: cannot read {mode_file}: {e}"));
    let words: Vec<&str> = mode.split_whitespace().collect();
    let sock = fd_channel::inherited(fd).expect("the handover channel");
    let limits = Limits {
        timeout: Duration::from_secs(10),
        ..Limits::default()
    };
    let theirs = fd_channel::recv(&sock, &limits).expect("the daemon's greeting");
    assert_eq!(theirs.kind, HELLO);
    let versions = match words.as_slice() {
        ["versions", a, b] => (a.parse::<u32>().unwrap(), b.parse::<u32>().unwrap()),
        _ => (1, 1),
    };
    let hello = serde_json::json!({"versions": [versions.0, versions.1], "binary": "9.9.9"});
    fd_channel::send(&sock, HELLO, hello.to_string().as_bytes(), &[]).expect("greet");
    if words.first() == Some(&"versions") {
        match fd_channel::recv(&sock, &limits) {
            Ok(answer) => eprintln!(
                "vs-fake-upgrade: the daemon answered (kind {}): {}",
                answer.kind,
                String::from_utf8_lossy(&answer.body)
            ),
            Err(e) => eprintln!("vs-fake-upgrade: no answer: {e}"),
        }
        return;
    }
    fd_channel::send(&sock, PREPARED, b"{}", &[]).expect("say prepared");
    let (mut frames, mut fds) = (0, 0);
    loop {
        let f = fd_channel::recv(&sock, &limits).expect("the state and the ports");
        frames += 1;
        fds += f.fds.len();
        if f.kind == SENT {
            break;
        }
    }
    eprintln!("vs-fake-upgrade: took {frames} frames and {fds} descriptors");
    match words.first() {
        Some(&"crash-after-state") => {
            eprintln!("vs-fake-upgrade: crashing on purpose");
            std::process::exit(101);
        }
        _ => {
            fd_channel::send(&sock, REFUSE, b"this test binary refuses every state", &[])
                .expect("refuse");
            // The old daemon kills it once it has read the refusal.
            std::thread::sleep(Duration::from_secs(10));
        }
    }
}
