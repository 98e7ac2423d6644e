#!/bin/bash
# Builds the tiny test guest used by the QEMU end-to-end tests, from Debian packages only:
#   - the kernel of linux-image-<version>-cloud-amd64 (virtio-net is a module there),
#   - a busybox-static initramfs whose /init configures eth0 from the kernel command line
#     and pings a peer in a loop, printing each round's summary on the serial console
#     (on a guest with two CPUs, a second loop pinned to CPU 1 prints VS-PING1 rounds).
# Output: $OUT/vmlinuz and $OUT/initramfs.gz (default OUT: tests/guest/build).
# Needs: apt-get (root) for busybox-static and cpio if missing, and dpkg.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$HERE/build}
if [[ -s $OUT/vmlinuz && -s $OUT/initramfs.gz && $OUT/initramfs.gz -nt $HERE/init.sh &&
      $OUT/initramfs.gz -nt $HERE/build-guest.sh ]]; then
    exit 0
fi
need=()
[[ -x /bin/busybox ]] && /bin/busybox --list 2>/dev/null | grep -qx ping || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if ((${#need[@]})); then
    echo "installing ${need[*]}" >&2
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
if [[ -z $pkg ]]; then
    apt-get update -q >/dev/null
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
fi
[[ -n $pkg ]] || { echo "cannot find linux-image-*-cloud-amd64 in apt" >&2; exit 1; }
apt-get download "$pkg" >/dev/null 2>&1 || { chmod 777 "$work"; apt-get download "$pkg" >/dev/null; }
dpkg -x ./*.deb kernel
ver=${pkg#linux-image-}
mods=kernel/lib/modules/$ver/kernel
mkdir -p root/bin root/sbin root/proc root/sys root/dev root/modules root/tmp
cp /bin/busybox root/bin/busybox
# virtio_mmio: the microvm machine has no PCI.
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci drivers/virtio/virtio_mmio \
         net/core/failover \
         drivers/net/net_failover drivers/net/virtio_net; do
    f=$mods/$m.ko
    [[ -f $f ]] || f=$(ls "$f".* 2>/dev/null | head -1)
    [[ -f $f ]] || { echo "module $m missing from $pkg" >&2; exit 1; }
    case $f in
        *.xz) xz -dc "$f" > "root/modules/$(basename "$m").ko" ;;
        *.zst) zstd -dqc "$f" > "root/modules/$(basename "$m").ko" ;;
        *) cp "$f" "root/modules/$(basename "$m").ko" ;;
    esac
done
install -m 755 "$HERE/init.sh" root/init
mkdir -p "$OUT"
(cd root && find . | cpio -o -H newc --quiet | gzip -9) > "$OUT/initramfs.gz.tmp"
cp kernel/boot/vmlinuz-"$ver" "$OUT/vmlinuz.tmp"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv "$OUT/initramfs.gz.tmp" "$OUT/initramfs.gz"
echo "guest built in $OUT ($pkg)" >&2
