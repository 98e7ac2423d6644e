#!/bin/bash
# Runs every vringswitch test: unit tests, the test-frontend suite, the deploy/ suite
# (systemd, Prometheus), the EVPN suite (FRR), the DPDK testpmd suite, the QEMU guest suite (multiqueue and microvm
# guests too) and the libvirt suite. Installs what is missing (QEMU, busybox, cpio, DPDK, FRR,
# Prometheus, strace, systemd, libvirt) with apt-get when run as root, schemathesis with
# pip, and reserves hugepages for DPDK.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "== $*" >&2; }

# Every file of tests/tests is run below: a new one left out of the lists is an error here.
for f in tests/tests/*.rs; do
    t=$(basename "$f" .rs)
    grep -Eq -- "--test $t( |\$|$)" "$0" || { echo "scripts/test.sh does not run tests/tests/$t.rs: add it" >&2; exit 1; }
done

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v dpdk-testpmd >/dev/null || need+=(dpdk-dev)
[[ -x /bin/busybox ]] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v stdbuf >/dev/null || need+=(coreutils)
command -v prometheus >/dev/null && command -v promtool >/dev/null || need+=(prometheus)
command -v strace >/dev/null || need+=(strace)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v c++ >/dev/null || need+=(g++)  # libFuzzer, built by the fuzz targets' check
command -v setpriv >/dev/null || need+=(util-linux)
# libvirt's QEMU driver, for tests/libvirt.rs (users and daemons: tests/guest/libvirt-host.sh)
command -v libvirtd >/dev/null || need+=(libvirt-daemon libvirt-daemon-driver-qemu)
command -v virsh >/dev/null || need+=(libvirt-clients)
command -v tshark >/dev/null || need+=(tshark)  # reads the pcapng captures back
command -v script >/dev/null || need+=(bsdutils)  # a terminal for vringctl capture's refusal
command -v ip >/dev/null || need+=(iproute2)  # network namespaces for the TAP and AF_XDP port tests
command -v ethtool >/dev/null || need+=(ethtool)  # TX checksumming off on veth for AF_XDP
compgen -G '/usr/lib/*/libxdp.so.1' >/dev/null || need+=(libxdp1)  # AF_XDP ports load it at runtime
[[ -x /usr/lib/frr/zebra ]] || need+=(frr)  # BGP EVPN speakers for tests/evpn.rs
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing packages: ${need[*]}; install them (apt-get install ${need[*]}) or run as root" >&2
        exit 1
    fi
    log "installing ${need[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

# schemathesis (PyPI) checks the API against its /openapi.json.
if ! command -v st >/dev/null; then
    command -v pip3 >/dev/null || python3 -m pip --version >/dev/null 2>&1 || {
        if [[ $(id -u) -eq 0 ]]; then
            log "installing python3-pip"
            apt-get update -q >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip >/dev/null
        fi
    }
    log "installing schemathesis"
    python3 -m pip install -q schemathesis 2>/dev/null ||
        python3 -m pip install -q --break-system-packages schemathesis
    hash -r
    command -v st >/dev/null || export PATH="$HOME/.local/bin:$PATH"
fi

# DPDK (testpmd) needs hugepages; the switch itself does not.
free=$(awk '/HugePages_Free/{print $2}' /proc/meminfo)
if ((free < 256)) && [[ $(id -u) -eq 0 ]]; then
    log "reserving hugepages for testpmd"
    total=$(awk '/HugePages_Total/{print $2}' /proc/meminfo)
    echo $((total + 512)) > /proc/sys/vm/nr_hugepages
fi
if [[ $(id -u) -eq 0 ]]; then
    mkdir -p /dev/hugepages
    mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages
    # Pages held by files of DPDK processes that died earlier.
    rm -f /dev/hugepages/vstest*map_* 2>/dev/null || true
fi

log "building"
cargo build --workspace --all-targets

log "unit tests and test-frontend suite"
cargo test --workspace --exclude vringswitch-tests
cargo test -p vringswitch-tests --lib --test switching --test lifecycle --test observability \
    --test api --test vlans --test persistence --test openapi --test port_security \
    --test hostile --test memory_changes --test soak --test restart --test fairness \
    --test local_security --test capture --test tap_ports --test afxdp_ports --test offloads \
    --test migration --test tenant_isolation --test policing --test trace --test mirror --test security_groups \
    --test handover --test vxlan_ports

# The fuzz targets (their own workspace, run with nightly: docs/fuzzing.md) must keep
# compiling against the code they fuzz.
log "fuzz targets compile"
cargo check --manifest-path fuzz/Cargo.toml --bins

log "EVPN suite: three hosts in namespaces, each with FRR (zebra, bfdd, bgpd)"
cargo test -p vringswitch-tests --test evpn -- --test-threads=1

log "deploy/ suite: systemd unit, Prometheus, dashboard and rules"
cargo test -p vringswitch-tests --test deploy -- --test-threads=1

# Suites that boot guests or run testpmd share two cores: one test at a time.
log "DPDK testpmd suite"
cargo test -p vringswitch-tests --test dpdk_testpmd -- --test-threads=1
log "QEMU guest suite"
cargo test -p vringswitch-tests --test qemu_guests -- --test-threads=1
log "security groups with QEMU guests"
cargo test -p vringswitch-tests --test security_groups_guests -- --test-threads=1
log "upgrade suite"
cargo test -p vringswitch-tests --test upgrade -- --test-threads=1
log "live migration suite"
cargo test -p vringswitch-tests --test live_migration -- --test-threads=1
log "libvirt suite"
cargo test -p vringswitch-tests --test libvirt -- --test-threads=1
