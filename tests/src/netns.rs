//! Network namespaces and `ip` (iproute2) for the tests of ports that reach the host's
//! network stack.

use std::process::Command;

/// Runs `ip ARGS`, failing the test with its message if it fails, or with how to install
/// iproute2 if it is missing.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run ip ({e}): install it with `apt-get install iproute2`")
    });
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted with its interfaces when dropped.
pub struct Netns(pub String);

impl Netns {
    /// A new namespace `name` (one left over from an earlier run is deleted first).
    pub fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        Netns(name.to_owned())
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}
