#!/bin/sh
# /init of the test bed's L1 VM (busybox + a few modules, packed by build.sh).
#
# L1 runs the HOST's own userland: the host `/` arrives read-only over virtio-9p (tag hostroot) with a
# tmpfs overlay for writes; the run dir (tag res) carries the job script in and stdout, stderr and the
# exit status out; tags s0..sN are host dirs shared read-write at their own paths.
# Progress goes to the serial console as `TESTBED_STAGE <name> <uptime>`, failures as
# `TESTBED_ERROR <what>: <detail>`: the host tool reads them to tell a boot hang from a kvm failure.
#
# Kernel command line knobs: tb_shares=<path>[,<path>...] (mounted from tags s0, s1...),
# /testbed.conf (written by build.sh) names the kernel release and where its full module tree sits in
# the host root (the test bed's cache), bind-mounted at /lib/modules/<release> so tests may modprobe more.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
up() { read -r u _ < /proc/uptime; echo "$u"; }
stage() { echo "TESTBED_STAGE $1 $(up)" > /dev/console; }
die() { echo "TESTBED_ERROR $1" > /dev/console; [ -d /res ] && echo 125 > /res/exit; sync; reboot -f; sleep 5; echo o > /proc/sysrq-trigger; }

mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
stage init

for m in $(cat /modules.order); do insmod "/lib/modules/$m" || die "insmod: $m failed"; done

P9="trans=virtio,version=9p2000.L,msize=512000"
mkdir -p /lower /ovl /newroot /res
# the 9p devices bind a moment after insmod: retry briefly
i=0; until mount -t 9p -o "$P9,cache=none" res /res 2>/tmp.err; do
  i=$((i+1)); [ $i -gt 100 ] && die "9p: can't mount the run dir: $(cat /tmp.err)"; sleep 0.05
done
mount -t 9p -o "$P9,cache=loose,ro" hostroot /lower || die "9p: can't mount the host root"
mount -t tmpfs -o mode=755 tmpfs /ovl && mkdir -p /ovl/u /ovl/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/ovl/u,workdir=/ovl/w /newroot || die "overlay: can't mount the root"
R=/newroot
mount -t proc proc $R/proc; mount -t sysfs sysfs $R/sys; mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm; mount -t devpts devpts $R/dev/pts; mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs tmpfs $R/run
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
mkdir -p $R/run/testbed && mount --bind /res $R/run/testbed

# Read-write shares, mounted at the same path as on the host.
for kv in $(cat /proc/cmdline); do case "$kv" in tb_shares=*) SHARES=${kv#tb_shares=};; esac; done
n=0
for p in $(echo "$SHARES" | tr , ' '); do
  mkdir -p "$R$p" && mount -t 9p -o "$P9,cache=mmap" "s$n" "$R$p" || die "9p: can't mount share s$n at $p"
  n=$((n+1))
done
stage root

. /testbed.conf
mkdir -p "$R/lib/modules/$MODVER" && mount --bind "/lower$MODDIR" "$R/lib/modules/$MODVER" || die "modules: can't bind $MODDIR"
chroot $R modprobe -a kvm_amd 2>/tmp.err || die "kvm_amd: modprobe failed: $(cat /tmp.err)"
[ -c $R/dev/kvm ] || die "kvm_amd: loaded but no /dev/kvm: $(dmesg | grep -i -E 'kvm|svm' | tail -n 3 | tr '\n' ' ')"
# Network pieces the VM tests use (taps in netns joined by tc mirred). Not fatal: a test that needs one says so.
chroot $R modprobe -a tun veth bridge sch_ingress act_mirred cls_matchall cls_u32 loop 2>/dev/null
ip link set lo up 2>/dev/null; hostname testbed-l1
stage kvm

# The job runs with the host's userland as the real root (switch_root, not chroot): a process that
# joins a container's mount namespace (runc exec) then sees that container's root, and pivot_root
# works as on a host. Stage two lives in the new root's /run and brings this busybox for the end.
mkdir -p $R/run/testbed-l1 && cp /bin/busybox $R/run/testbed-l1/busybox
cat > $R/run/testbed-l1/stage2 <<'STAGE2'
#!/run/testbed-l1/busybox sh
B=/run/testbed-l1/busybox
# A job silent for 5 and 20 minutes gets its processes (state, wait channel) and the newest guest
# consoles dumped to L1's console, so a hang in CI says where it is stuck.
dump() {
  echo "TESTBED_IDLE no job output for ${1}s; processes (pid state wchan args):"
  for d in /proc/[0-9]*; do
    a=$($B tr '\0' ' ' < "$d/cmdline" 2>/dev/null | $B head -c 160)
    [ -n "$a" ] && echo "${d#/proc/} $($B cut -d' ' -f3 "$d/stat" 2>/dev/null) $($B cat "$d/wchan" 2>/dev/null) $a"
  done
  for f in $($B find /tmp /run -name console.log 2>/dev/null | $B head -n 4); do
    echo "== tail $f"; $B tail -n 40 "$f"
  done
}
# A heartbeat on the console every 30 s tells the host that L1 still runs: under TCG's nested SVM
# an L1 can freeze whole (no timer fires; QEMU idles), and the host then retries the job.
(
  last=; quiet=0
  while $B sleep 30; do
    read -r u _ < /proc/uptime
    echo "TESTBED_BEAT $u" > /dev/console
    now=$($B stat -c %Y /run/testbed/stdout /run/testbed/stderr 2>/dev/null | $B tr '\n' ' ')
    if [ "$now" = "$last" ]; then quiet=$((quiet + 30)); else quiet=0; last=$now; fi
    case $quiet in 300|1200) dump $quiet > /dev/console 2>&1;; esac
  done
) </dev/null >/dev/null 2>&1 &
/bin/sh /run/testbed/job.sh </dev/null
rc=$?
echo "$rc" > /run/testbed/exit
read -r u _ < /proc/uptime
echo "TESTBED_STAGE exit=$rc $u" > /dev/console
$B sync
$B reboot -f
STAGE2
chmod 755 $R/run/testbed-l1/stage2
exec switch_root $R /run/testbed-l1/stage2
