#!/bin/busybox sh
# /init of the test guest. Kernel command line parameters:
#   vs.ip=ADDR/PREFIX   address of eth0
#   vs.peer=ADDR        address to ping, 20 pings a round, forever
#   vs.send=ADDR:PORT:MB  also send MB MiB of random bytes once over TCP to ADDR:PORT
#                       (busybox nc), printing VS-MD5 <md5> before and VS-SENT rc=N after
# With two CPUs or more, each CPU pings (CPU 0 prints VS-PING rounds, CPU 1 VS-PING1): a
# multiqueue NIC then sends on two queue pairs.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_mmio failover net_failover virtio_net; do
    insmod /modules/$m.ko 2>/dev/null
done
ip=; peer=; send=
for arg in $(cat /proc/cmdline); do
    case $arg in
        vs.ip=*) ip=${arg#vs.ip=} ;;
        vs.peer=*) peer=${arg#vs.peer=} ;;
        vs.send=*) send=${arg#vs.send=} ;;
    esac
done
for i in $(seq 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
ip link set lo up
ip addr add "$ip" dev eth0
ip link set eth0 up
echo "VS-GUEST-READY $ip cpus=$(nproc) queues=$(ls -d /sys/class/net/eth0/queues/tx-* | wc -l)"
# ping_loop CPU LABEL: rounds of 20 pings from CPU, forever.
ping_loop() {
    round=0
    while true; do
        round=$((round + 1))
        out=$(taskset -c "$1" ping -c 20 -i 0.1 -W 1 "$peer" 2>&1 | grep 'packets transmitted')
        echo "$2 round=$round $out"
        sleep 0.5
    done
}
if [ -n "$send" ]; then
    (
        to=${send%%:*}; rest=${send#*:}; port=${rest%%:*}; mb=${rest#*:}
        dd if=/dev/urandom of=/tmp/send bs=1048576 count="$mb" 2>/dev/null
        echo "VS-MD5 $(md5sum /tmp/send | cut -d' ' -f1)"
        nc "$to" "$port" < /tmp/send
        echo "VS-SENT rc=$?"
    ) &
fi
[ "$(nproc)" -ge 2 ] && ping_loop 1 VS-PING1 &
ping_loop 0 VS-PING
