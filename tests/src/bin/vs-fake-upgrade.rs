//! Stands in for a new vringswitch binary in the upgrade tests: a binary that speaks only
//! handover versions 7 to 9. Started by the running daemon with its arguments and
//! `--handover-fd N`, it greets it over that descriptor as a newer release would, and
//! prints what the daemon answers on standard error, unless the daemon kills it first (as
//! it kills any new binary that fails).

use std::time::Duration;

use vringswitch_ports::fd_channel::{self, Limits};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let fd: i32 = args
        .iter()
        .position(|a| a == "--handover-fd")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .expect("--handover-fd N");
    let sock = fd_channel::inherited(fd).expect("the handover channel");
    let limits = Limits {
        timeout: Duration::from_secs(10),
        ..Limits::default()
    };
    let theirs = fd_channel::recv(&sock, &limits).expect("the daemon's greeting");
    let hello = serde_json::json!({"versions": [7, 9], "binary": "9.9.9"});
    fd_channel::send(&sock, theirs.kind, hello.to_string().as_bytes(), &[])
        .expect("send the greeting");
    match fd_channel::recv(&sock, &limits) {
        Ok(answer) => eprintln!(
            "vs-fake-upgrade: the daemon answered (kind {}): {}",
            answer.kind,
            String::from_utf8_lossy(&answer.body)
        ),
        Err(e) => eprintln!("vs-fake-upgrade: no answer: {e}"),
    }
}
