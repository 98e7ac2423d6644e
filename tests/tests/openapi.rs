//! The served /openapi.json against the live daemon with schemathesis: every operation,
//! valid and invalid inputs, stateful sequences. No check may fail.
//!
//! One check is left out: `positive_data_acceptance` expects every schema-valid request to
//! succeed, but some refusals depend on the state and cannot be written in a schema (a
//! port naming a bridge that does not exist, a static entry on a trunk without a VLAN);
//! those are 400s by design.
//!
//! And for one operation, `use_after_free`: `DELETE /v1/bridges/{name}/fdb` flushes a
//! table, which stays there (empty) by design, while the check takes a DELETE to remove
//! what its path names.
//!
//! The packet capture is left out: its answer streams until the client leaves (or a count
//! or time it asks for), which schemathesis reads as a timeout. `tests/capture.rs` checks
//! its queries and answers. So is the upgrade: each call replaces the daemon's process.
//! `tests/upgrade.rs` checks its requests and answers.

use std::process::Command;

use vringswitch_tests::setup::Setup;

#[test]
fn schemathesis_finds_no_failure() {
    let s = Setup::new("openapi", &[("br0", &["a", "b"])], 1);
    let url = format!("http://{}/openapi.json", s.daemon.api);
    let config = s.dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[[operations]]\ninclude-method = \"DELETE\"\ninclude-path = \"/v1/bridges/{name}/fdb\"\n\
         checks.use_after_free.enabled = false\n",
    )
    .unwrap();
    let out = Command::new("st")
        // Its cache goes to the test's directory, not into the source tree.
        .current_dir(s.dir.path())
        .arg("--config-file")
        .arg(&config)
        .args(["run", &url, "--max-examples", "40", "--seed", "20261122"])
        .args(["--exclude-checks", "positive_data_acceptance", "--no-color"])
        .args(["--exclude-path", "/v1/ports/{name}/capture"])
        .args(["--exclude-path", "/v1/upgrade"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run schemathesis's `st` ({e}): install it with \
                 `python3 -m pip install schemathesis` (scripts/test.sh does)"
            )
        });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really ran every operation it selected (all but the capture and the upgrade).
    let selected = text
        .split("Selected: ")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no operation count in: {text}"));
    assert!(selected.parse::<u32>().unwrap() >= 20, "{text}");
    assert!(text.contains(&format!("Tested: {selected}\n")), "{text}");
    assert!(s.daemon.log_text().lines().all(|l| !l.contains("panicked")));
}
