#!/bin/bash
# Prepares this host for the libvirt tests, as an operator would (docs/operations.md), on a
# machine without systemd as PID 1. Needs root and Debian's libvirt-daemon,
# libvirt-daemon-driver-qemu and libvirt-clients (scripts/test.sh installs them).
#   - the vringswitch system user and group (what deploy/systemd/vringswitch.sysusers.conf
#     makes);
#   - the libvirt-qemu user QEMU runs as (only libvirt-daemon-system creates it; the QEMU
#     driver does not start without it), in the vringswitch group so that QEMU reaches the
#     sockets, and in kvm as Debian's package puts it;
#   - virtlogd and libvirtd running (libvirtd started again when the group changed: it
#     reads QEMU's groups when it starts), and answering on qemu:///system.
set -euo pipefail
log() { echo "libvirt-host: $*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "must run as root"; exit 1; }
for c in libvirtd virtlogd virsh; do
    command -v $c >/dev/null || {
        log "$c is missing: apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
        exit 1
    }
done

getent group vringswitch >/dev/null || groupadd -r vringswitch
id vringswitch >/dev/null 2>&1 ||
    useradd -r -g vringswitch -d /var/lib/vringswitch -s /usr/sbin/nologin vringswitch
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 ||
    useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
# vringswitch: to reach the switch's sockets. kvm: libvirt checks that QEMU's user can open
# /dev/kvm whenever it looks up QEMU's capabilities, and probes QEMU again (about 45 s
# under TCG) every time it cannot, although these domains never use KVM.
restart=0
for g in vringswitch kvm; do
    if ! id -nG libvirt-qemu | tr ' ' '\n' | grep -qx $g; then
        usermod -a -G $g libvirt-qemu
        restart=1
    fi
done

mkdir -p /var/log/libvirt /var/lib/libvirt/qemu /var/run/libvirt
pgrep -x virtlogd >/dev/null || virtlogd -d
if ((restart)) && pgrep -x libvirtd >/dev/null; then
    log "restarting libvirtd: libvirt-qemu joined new groups"
    pkill -x libvirtd
    for _ in $(seq 100); do pgrep -x libvirtd >/dev/null || break; sleep 0.1; done
fi
pgrep -x libvirtd >/dev/null || libvirtd -d
for _ in $(seq 100); do
    virsh -q -c qemu:///system version >/dev/null 2>&1 && exit 0
    sleep 0.2
done
log "libvirtd does not answer on qemu:///system"
exit 1
