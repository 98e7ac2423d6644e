#!/bin/busybox sh
# /init of the test guest. Kernel command line parameters:
#   vs.ip=ADDR/PREFIX   address of eth0
#   vs.ip6=ADDR/PREFIX  an IPv6 address of eth0 too
#   vs.peer=ADDR        address to ping, 20 pings a round, forever
#   vs.ping=SECS_COUNT  ping every SECS seconds, COUNT pings a round, rounds back to back
#   vs.send=ADDR_PORT_MB[,ADDR_PORT_MB...]  also send MB MiB of random bytes once over TCP
#                       to each ADDR:PORT in turn (busybox nc), printing
#                       VS-MD5 <md5> before and VS-SENT rc=N after each (the last: VS-MD5
#                       and VS-SENT; before it, VS-MD5-ADDR:PORT and VS-SENT-ADDR:PORT too)
#   vs.recv=PORT[,PORT...]  receive one TCP stream on each PORT, printing
#                       VS-RECV-PORT <md5> once it ended
#   vs.stats=SECS       print eth0's packet counters and link changes every SECS seconds:
#                       VS-NETSTATS rx=N tx=N carrier_changes=N
#   vs.synretries=N     TCP connects give up after N SYN retries (Linux's default 6 waits
#                       about two minutes): a connection nobody answers fails in seconds
# It prints eth0's virtio features as VS-FEATURES <bits> (character i is feature bit i).
# With two CPUs or more, each CPU pings (CPU 0 prints VS-PING rounds, CPU 1 VS-PING1): a
# multiqueue NIC then sends on two queue pairs.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_mmio failover net_failover virtio_net; do
    insmod /modules/$m.ko 2>/dev/null
done
ip=; ip6=; peer=; send=; recv=; ping=; stats=; synretries=
for arg in $(cat /proc/cmdline); do
    case $arg in
        vs.ip=*) ip=${arg#vs.ip=} ;;
        vs.ip6=*) ip6=${arg#vs.ip6=} ;;
        vs.peer=*) peer=${arg#vs.peer=} ;;
        vs.send=*) send=${arg#vs.send=} ;;
        vs.recv=*) recv=${arg#vs.recv=} ;;
        vs.ping=*) ping=${arg#vs.ping=} ;;
        vs.stats=*) stats=${arg#vs.stats=} ;;
        vs.synretries=*) synretries=${arg#vs.synretries=} ;;
    esac
done
for i in $(seq 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
ip link set lo up
[ -n "$synretries" ] && echo "$synretries" > /proc/sys/net/ipv4/tcp_syn_retries
ip addr add "$ip" dev eth0
[ -n "$ip6" ] && ip -6 addr add "$ip6" dev eth0
ip link set eth0 up
echo "VS-FEATURES $(cat /sys/class/net/eth0/device/features)"
echo "VS-GUEST-READY $ip cpus=$(nproc) queues=$(ls -d /sys/class/net/eth0/queues/tx-* | wc -l)"
# Receivers first: a sender may start as soon as its guest is up. nc's stdin is a FIFO the
# subshell holds open (busybox nc ends early at the end of its stdin), so nc ends with the
# stream, then md5sum prints.
for p in $(echo "$recv" | tr ',' ' '); do
    (
        mkfifo "/tmp/in.$p"
        exec 3<>"/tmp/in.$p"
        echo "VS-RECV-$p $(nc -l -p "$p" < "/tmp/in.$p" | md5sum | cut -d' ' -f1)"
    ) &
done
if [ -n "$stats" ]; then
    (
        c=/sys/class/net/eth0/statistics
        while true; do
            echo "VS-NETSTATS rx=$(cat $c/rx_packets) tx=$(cat $c/tx_packets) carrier_changes=$(cat /sys/class/net/eth0/carrier_changes)"
            sleep "$stats"
        done
    ) &
fi
# ping_loop CPU LABEL: rounds of pings from CPU, forever.
interval=0.1; count=20; pause=0.5
if [ -n "$ping" ]; then
    interval=${ping%%_*}; count=${ping#*_}; pause=0.05
fi
ping_loop() {
    round=0
    while true; do
        round=$((round + 1))
        out=$(taskset -c "$1" ping -c "$count" -i "$interval" -W 1 "$peer" 2>&1 | grep 'packets transmitted')
        echo "$2 round=$round $out"
        sleep "$pause"
    done
}
if [ -n "$send" ]; then
    (
        for one in $(echo "$send" | tr ',' ' '); do
            to=${one%%_*}; rest=${one#*_}; port=${rest%%_*}; mb=${rest#*_}
            # The receiver may still be booting: wait until it answers, and its nc listens.
            until ping -c 1 -W 1 "$to" >/dev/null 2>&1; do sleep 1; done
            sleep 3
            dd if=/dev/urandom of=/tmp/send bs=1048576 count="$mb" 2>/dev/null
            md5=$(md5sum /tmp/send | cut -d' ' -f1)
            echo "VS-MD5-$to:$port $md5"
            echo "VS-MD5 $md5"
            nc "$to" "$port" < /tmp/send
            rc=$?
            echo "VS-SENT-$to:$port rc=$rc"
            echo "VS-SENT rc=$rc"
            rm -f /tmp/send
        done
    ) &
fi
[ "$(nproc)" -ge 2 ] && ping_loop 1 VS-PING1 &
ping_loop 0 VS-PING
