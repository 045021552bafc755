//go:build e2e

package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The worker node: containerd and the kubelet run on the host, in the mount
// namespace `make e2e` runs in, outside the Ceph root (containerd and runc
// are Debian 12's, the kubelet is a static binary); the node plugins run
// inside the root, each through its own scripts/in-root. The kubelet's root
// directory is a shared mount on the host and in-root keeps it a peer
// (IN_ROOT_SHARED), so the FUSE and bind mounts the node plugins make below
// it are seen by the kubelet and by runc, and the kubelet's own mounts
// (projected volumes) by the plugins.
//
// Everything the node leaves lives below one directory per checkout
// (/tmp/cephcsi-e2e-node-<hash of the checkout's path>) and one cgroup,
// so that a killed run's leftovers are found and removed by the next run,
// and runs of other checkouts are never touched.

type node struct {
	e           *env
	dir         string
	kubeletRoot string
	hostNS      string // the host's mount namespace, as /proc/<pid>/ns/mnt
	sock        string // containerd's socket
	cgroup      string // the kubelet's cgroupRoot
	containerd  *proc
	kubelet     *proc
	kubeletArgs []string
	images      []string
}

// hostMountNS finds the mount namespace in-root was started from: that of
// the nearest ancestor whose namespace differs from ours.
func hostMountNS() (string, error) {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return "", err
	}
	pid := os.Getpid()
	for pid > 1 { // up to init, whose namespace is checked last
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return "", err
		}
		// pid (comm) state ppid ...
		fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
		if pid, err = strconv.Atoi(fields[1]); err != nil {
			return "", err
		}
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
		if err == nil && ns != self {
			return fmt.Sprintf("/proc/%d/ns/mnt", pid), nil
		}
	}
	return "", fmt.Errorf("no ancestor outside this mount namespace: run the e2e through scripts/in-root")
}

// hostProc is /proc/<pid> of a process in the host's mount namespace.
func (n *node) hostProc() string { return filepath.Dir(filepath.Dir(n.hostNS)) }

// host runs a command in the host's mount namespace, in the checkout. The
// directory is entered by its path once there (env -C): nsenter's --wd
// opens it before switching, and a directory of this namespace's mounts is
// unreachable from the host's, which broke checkouts under /tmp (bound
// apart by scripts/in-root).
func (n *node) hostCmd(args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--mount=" + n.hostNS, "--", "/usr/bin/env", "-C", n.e.root}, args...)...)
}

func (n *node) host(args ...string) error {
	out, err := n.hostCmd(args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("on the host: %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func newNode(e *env) (*node, error) {
	sum := sha256.Sum256([]byte(e.root))
	id := hex.EncodeToString(sum[:])[:10]
	ns, err := hostMountNS()
	if err != nil {
		return nil, err
	}
	dir := "/tmp/cephcsi-e2e-node-" + id
	return &node{e: e, dir: dir, kubeletRoot: filepath.Join(dir, "kubelet"), hostNS: ns,
		sock: filepath.Join(dir, "containerd", "containerd.sock"), cgroup: "/cephcsi-e2e-" + id}, nil
}

// cgroupDirs lists our cgroup in every hierarchy mounted on /sys/fs/cgroup.
func (n *node) cgroupDirs() []string {
	var dirs []string
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	for _, ent := range entries {
		base := filepath.Join("/sys/fs/cgroup", ent.Name())
		if _, err := os.Stat(filepath.Join(base, "cgroup.procs")); err == nil {
			dirs = append(dirs, base+n.cgroup)
		}
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.procs"); err == nil { // pure cgroup v2
		dirs = append(dirs, "/sys/fs/cgroup"+n.cgroup)
	}
	return dirs
}

// start brings the node up: containerd, the images, the kubelet, and waits
// until the Node is Ready.
func (n *node) start() error {
	begin := time.Now()
	e := n.e
	if left := n.teardown(); len(left) > 0 {
		fmt.Printf("e2e: node: removed what an earlier run left: %s\n", strings.Join(left, "; "))
	}
	for _, bin := range []string{"/usr/bin/containerd", "/usr/bin/ctr", "/usr/sbin/runc", "/usr/bin/containerd-shim-runc-v2", "/bin/busybox"} {
		if err := n.host("test", "-x", bin); err != nil {
			return fmt.Errorf("%s is missing on the host (make e2e installs containerd, runc and busybox-static): %v", bin, err)
		}
	}
	for _, d := range []string{"containerd", "kubelet", "cni/conf", "cni/bin", "images", "pki", "pod-logs",
		"device-plugins", "log-containers", "sysctl"} {
		if err := os.MkdirAll(filepath.Join(n.dir, d), 0o755); err != nil {
			return err
		}
	}
	// The kubelet's root: a shared mount of its own on the host.
	if err := n.host("sh", "-c", `mount --bind "$1" "$1" && mount --make-shared "$1"`, "sh", n.kubeletRoot); err != nil {
		return err
	}
	// Mount points on the host for what the kubelet writes outside its root
	// dir (in its own mount namespace they are our directories instead),
	// and the directory of the shims' sockets, /run/containerd/s whatever
	// containerd's state directory is: made when missing, removed at the end.
	for _, d := range []string{"/var/lib/kubelet/device-plugins", "/var/log/containers", "/run/containerd/s"} {
		if err := n.hostMkdir(d); err != nil {
			return err
		}
	}
	for _, d := range n.cgroupDirs() {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("cgroup %s: %w", d, err)
		}
		if strings.Contains(d, "/cpuset/") {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/cpuset", f))
				if err == nil {
					_ = os.WriteFile(filepath.Join(d, f), v, 0o644)
				}
			}
		}
	}
	if err := n.startContainerd(); err != nil {
		return err
	}
	t0 := time.Now()
	if err := n.importImages(); err != nil {
		return err
	}
	fmt.Printf("e2e: node: images %s and %s imported in %.1fs\n", pauseImage, busyboxImage, time.Since(t0).Seconds())
	if err := n.startKubelet(); err != nil {
		return err
	}
	fmt.Printf("e2e: node %s (containerd, kubelet %s) Ready in %.1fs\n", e2eNode,
		strings.TrimPrefix(filepath.Base(e.tools["kubelet"]), "kubelet-"), time.Since(begin).Seconds())
	return nil
}

// hostMkdir creates a directory on the host, recording the ones that were
// missing (parents first) so that teardown removes them again.
func (n *node) hostMkdir(d string) error {
	var missing []string
	for p := d; p != "/"; p = filepath.Dir(p) {
		if n.host("test", "-d", p) == nil {
			break
		}
		missing = append([]string{p}, missing...)
	}
	if len(missing) == 0 {
		return nil
	}
	if err := n.host("mkdir", "-p", d); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(n.dir, "made-dirs"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintln(f, strings.Join(missing, "\n"))
	return err
}

func (n *node) startContainerd() error {
	cd := filepath.Join(n.dir, "containerd")
	// A loopback-only CNI network: containerd reports the network ready;
	// pods use the host's network (hostNetwork), so it is never run.
	if err := os.WriteFile(filepath.Join(n.dir, "cni/conf/10-loopback.conf"),
		[]byte(`{"cniVersion": "0.3.1", "name": "lo", "type": "loopback"}`+"\n"), 0o644); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.opt", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  # The sandbox lacks CAP_SYS_RESOURCE: no oom_score_adj below ours.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[6]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
`, filepath.Join(cd, "root"), filepath.Join(cd, "state"), n.sock, n.sock+".ttrpc", pauseImage,
		filepath.Join(cd, "runc"), filepath.Join(n.dir, "cni/bin"), filepath.Join(n.dir, "cni/conf"))
	cfgPath := filepath.Join(cd, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	cmd := n.hostCmd("/usr/bin/containerd", "--config", cfgPath, "--log-level", "info")
	var err error
	if n.containerd, err = n.e.start("containerd", cmd.Path, cmd.Args[1:]...); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if n.containerd.exited() {
			return fmt.Errorf("containerd exited (%v):\n%s", n.containerd.err, n.containerd.tail(20))
		}
		if err := n.host("/usr/bin/ctr", "--address", n.sock, "version"); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("containerd not answering after 30s: %v\n%s", err, n.containerd.tail(20))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (n *node) importImages() error {
	hostBusybox := filepath.Join(n.hostProc(), "root", "bin", "busybox")
	archives, err := n.e.buildImages(filepath.Join(n.dir, "images"), hostBusybox)
	if err != nil {
		return err
	}
	for _, a := range archives {
		if err := n.host("/usr/bin/ctr", "--address", n.sock, "-n", "k8s.io", "images", "import", a); err != nil {
			return err
		}
	}
	out, err := n.hostCmd("/usr/bin/ctr", "--address", n.sock, "-n", "k8s.io", "images", "ls", "-q").Output()
	if err != nil {
		return err
	}
	for _, want := range []string{pauseImage, busyboxImage} {
		if !strings.Contains(string(out), want) {
			return fmt.Errorf("image %s not in containerd after the import:\n%s", want, out)
		}
	}
	n.images = []string{pauseImage, busyboxImage}
	return nil
}

// kubeletNS is run on the host by the kubelet's process before it becomes
// the kubelet: a mount namespace of its own in which the kubelet root stays
// a peer of the host's (its mounts reach containerd and the plugins) and
// everything else it would write outside its root is ours:
//   - the /proc/sys entries it insists on (kernel.panic_on_oops=1 would
//     reboot this machine on any oops) are plain files holding the values
//     it wants; with protectKernelDefaults it only checks them;
//   - the device plugin socket and /var/log/containers are directories of
//     this run.
const kubeletNS = `set -euo pipefail
root=$1 dir=$2
shift 2
while read -r _ _ _ _ mp rest; do
	[[ $rest == *shared:* ]] || continue
	mp=$(printf "%b" "$mp")
	[[ $mp == "$root" ]] || mount --make-slave "$mp"
done </proc/self/mountinfo
mount --make-rslave /proc
for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
	kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
	f=${kv%%=*} v=${kv#*=}
	file=$dir/sysctl/${f//\//.}
	echo "$v" >"$file"
	mount --bind "$file" "/proc/sys/$f"
	[[ $(cat "/proc/sys/$f") == "$v" ]]
done
mount --bind "$dir/device-plugins" /var/lib/kubelet/device-plugins
mount --bind "$dir/log-containers" /var/log/containers
exec "$@"
`

func (n *node) startKubelet() error {
	e := n.e
	pkiDir := filepath.Join(n.dir, "pki")
	p := &pki{dir: pkiDir, cert: e.pki.cert, key: e.pki.key, CA: e.pki.CA}
	// The Node authorizer and NodeRestriction know the kubelet by this name
	// and group.
	cert, key, err := p.issue("system:node:"+e2eNode, []string{"system:nodes"})
	if err != nil {
		return err
	}
	serveCert, serveKey, err := p.issue("kubelet-serving", nil, "127.0.0.1", e2eNode)
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(pkiDir, "kubelet.kubeconfig")
	if err := e.writeKubeconfig(kubeconfig, "system:node:"+e2eNode,
		fmt.Sprintf("    client-certificate: %s\n    client-key: %s\n", cert, key)); err != nil {
		return err
	}
	ports := make([]int, 2)
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return err
		}
	}
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
tlsCertFile: %s
tlsPrivateKeyFile: %s
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
cgroupRoot: %s
failSwapOn: false
failCgroupV1: false
protectKernelDefaults: true
podLogsDir: %s
registerNode: true
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
serializeImagePulls: false
# A running pod's volumes are grown (NodeExpandVolume) when the kubelet
# syncs the pod: every minute by default, every 10 s here.
syncFrequency: 10s
`, ports[0], ports[1], serveCert, serveKey, e.pki.CA, n.sock, n.cgroup, filepath.Join(n.dir, "pod-logs"))
	cfgPath := filepath.Join(n.dir, "kubelet-config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	n.kubeletArgs = []string{"unshare", "--mount", "--propagation", "unchanged", "--",
		"bash", "-c", kubeletNS, "kubelet-ns", n.kubeletRoot, n.dir,
		e.tools["kubelet"], "--config=" + cfgPath, "--kubeconfig=" + kubeconfig,
		"--root-dir=" + n.kubeletRoot, "--hostname-override=" + e2eNode, "--node-ip=127.0.0.1", "--v=2"}
	cmd := n.hostCmd(n.kubeletArgs...)
	if n.kubelet, err = e.start("kubelet", cmd.Path, cmd.Args[1:]...); err != nil {
		return err
	}
	out, err := e.kubectl(nil, "wait", "--for=condition=Ready", "--timeout=120s", "node/"+e2eNode)
	if err != nil {
		// kubectl wait fails at once while the Node does not exist yet.
		deadline := time.Now().Add(120 * time.Second)
		for err != nil && time.Now().Before(deadline) {
			if n.kubelet.exited() {
				return fmt.Errorf("kubelet exited (%v):\n%s", n.kubelet.err, n.kubelet.tail(30))
			}
			time.Sleep(time.Second)
			out, err = e.kubectl(nil, "wait", "--for=condition=Ready", "--timeout=60s", "node/"+e2eNode)
		}
		if err != nil {
			return fmt.Errorf("node %s not Ready: %v\n%s\n%s", e2eNode, err, out, n.kubelet.tail(30))
		}
	}
	// The kubelet refuses a loopback node IP ("nodeIP can't be loopback
	// address") and then sets no address at all, leaving the API server no
	// way to reach it for exec and logs. Given --node-ip=127.0.0.1 it fails
	// that way on every status update and leaves the addresses alone, so we
	// set them once: the API server reaches the kubelet on 127.0.0.1.
	if out, err := e.kubectl(nil, "patch", "node", e2eNode, "--subresource=status", "--type=merge", "-p",
		`{"status":{"addresses":[{"type":"InternalIP","address":"127.0.0.1"},{"type":"Hostname","address":"`+e2eNode+`"}]}}`); err != nil {
		return fmt.Errorf("node addresses: %v\n%s", err, out)
	}
	return nil
}

// hostMounts lists the mount points below n.dir in the host's namespace,
// deepest first.
func (n *node) hostMounts() []string {
	var mps []string
	for _, m := range n.hostMountsTyped() {
		mps = append(mps, m.path)
	}
	return mps
}

type mountEntry struct{ path, fstype string }

func (n *node) hostMountsTyped() []mountEntry {
	f, err := os.Open(filepath.Join(n.hostProc(), "mountinfo"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var mps []mountEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		fstype := ""
		if i := strings.Index(line, " - "); i >= 0 {
			if f := strings.Fields(line[i+3:]); len(f) > 0 {
				fstype = f[0]
			}
		}
		if mp == n.dir || strings.HasPrefix(mp, n.dir+"/") {
			mps = append(mps, mountEntry{mp, fstype})
		}
	}
	sort.SliceStable(mps, func(i, j int) bool { return strings.Count(mps[i].path, "/") > strings.Count(mps[j].path, "/") })
	return mps
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ourProcesses lists the processes whose command line names n.dir: the
// kubelet, containerd and its shims, the node plugins and their FUSE
// daemons.
func (n *node) ourProcesses() map[int]string {
	out := map[int]string{}
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == self {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil || len(data) == 0 {
			continue
		}
		cmd := strings.ReplaceAll(strings.TrimRight(string(data), "\x00"), "\x00", " ")
		if strings.Contains(cmd, n.dir) && !strings.HasPrefix(cmd, "nsenter ") {
			out[pid] = cmd
		}
	}
	return out
}

// cgroupProcesses lists the processes in our cgroup tree (the pods').
func (n *node) cgroupProcesses() []int {
	seen := map[int]bool{}
	var pids []int
	for _, d := range n.cgroupDirs() {
		_ = filepath.WalkDir(d, func(p string, de os.DirEntry, err error) error {
			if err != nil || !de.IsDir() {
				return nil
			}
			data, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
					seen[pid] = true
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// loopDevices lists the loop devices whose backing file is below n.dir.
func (n *node) loopDevices() []string {
	var devs []string
	matches, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, m := range matches {
		data, err := os.ReadFile(m)
		// The kernel shows the path as the namespace that attached the device
		// sees it: from inside the Ceph root, with the root's path before it.
		if err == nil && strings.Contains(string(data), n.dir+"/") {
			devs = append(devs, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(m))))
		}
	}
	return devs
}

func killAll(pids []int, sig syscall.Signal) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, sig)
	}
}

func waitGone(pids []int, timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	for {
		var alive []int
		for _, pid := range pids {
			if syscall.Kill(pid, 0) == nil {
				if data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(data), ") Z ") {
					alive = append(alive, pid)
				}
			}
		}
		if len(alive) == 0 || time.Now().After(deadline) {
			return alive
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// teardown stops and removes everything of the node, in an order that
// leaves nothing busy: the kubelet, the pods' processes, containerd and its
// shims, the mounts below the node's directory, the FUSE daemons and node
// plugins, loop devices, cgroups, the directories it made on the host. It
// returns what it had to remove by force (empty after a clean run).
func (n *node) teardown() []string {
	var forced []string
	if n.kubelet != nil {
		n.kubelet.stop()
	}
	// A kubelet of an earlier, killed run.
	for pid, cmd := range n.ourProcesses() {
		if strings.Contains(cmd, "--root-dir="+n.kubeletRoot) && !strings.HasPrefix(cmd, "unshare ") && !strings.HasPrefix(cmd, "bash ") {
			forced = append(forced, fmt.Sprintf("kubelet %d", pid))
			killAll([]int{pid}, syscall.SIGKILL)
			waitGone([]int{pid}, 5*time.Second)
		}
	}
	if pids := n.cgroupProcesses(); len(pids) > 0 {
		forced = append(forced, fmt.Sprintf("%d pod processes", len(pids)))
		killAll(pids, syscall.SIGKILL)
		waitGone(pids, 10*time.Second)
	}
	// Shims, then containerd. The shims' sockets are in /run/containerd/s,
	// named by a hash of containerd's address, the namespace and the ID.
	var shimSockets []string
	for pid, cmd := range n.ourProcesses() {
		if strings.Contains(cmd, "containerd-shim") {
			f := strings.Fields(cmd)
			for i := 0; i+1 < len(f); i++ {
				if f[i] == "-id" {
					sum := sha256.Sum256([]byte(filepath.Join(n.sock, "k8s.io", f[i+1])))
					shimSockets = append(shimSockets, "/run/containerd/s/"+hex.EncodeToString(sum[:]))
				}
			}
			forced = append(forced, fmt.Sprintf("shim %d", pid))
			killAll([]int{pid}, syscall.SIGKILL)
		}
	}
	if n.containerd != nil {
		n.containerd.stop()
	}
	for pid, cmd := range n.ourProcesses() {
		if strings.Contains(cmd, "containerd") && strings.Contains(cmd, "--config") {
			forced = append(forced, fmt.Sprintf("containerd %d", pid))
			killAll([]int{pid}, syscall.SIGKILL)
			waitGone([]int{pid}, 5*time.Second)
		}
	}
	for _, s := range shimSockets {
		_ = n.host("rm", "-f", s)
	}
	// The filesystems on loop devices and the bind mounts of the volumes,
	// then the loop devices (the rbd-fuse mapper's), then the FUSE mounts
	// under them.
	umount := func(mp string) {
		if err := n.host("umount", mp); err != nil {
			_ = n.host("umount", "-l", mp)
		}
		forced = append(forced, "mount "+mp)
	}
	for _, m := range n.hostMountsTyped() {
		if m.path != n.kubeletRoot && !strings.HasPrefix(m.fstype, "fuse") {
			umount(m.path)
		}
	}
	for _, dev := range n.loopDevices() {
		if err := n.host("losetup", "-d", dev); err != nil {
			forced = append(forced, err.Error())
		} else {
			forced = append(forced, "loop device "+dev)
		}
	}
	for _, mp := range n.hostMounts() {
		if mp != n.kubeletRoot {
			umount(mp)
		}
	}
	// Node plugins and FUSE daemons.
	var rest []int
	for pid := range n.ourProcesses() {
		rest = append(rest, pid)
	}
	if len(rest) > 0 {
		forced = append(forced, fmt.Sprintf("%d processes naming %s", len(rest), n.dir))
		killAll(rest, syscall.SIGTERM)
		if alive := waitGone(rest, 5*time.Second); len(alive) > 0 {
			killAll(alive, syscall.SIGKILL)
			waitGone(alive, 5*time.Second)
		}
	}
	for _, dev := range n.loopDevices() {
		_ = n.host("losetup", "-d", dev)
	}
	for _, mp := range n.hostMounts() {
		if err := n.host("umount", mp); err != nil {
			_ = n.host("umount", "-l", mp)
		}
	}
	for _, d := range n.cgroupDirs() {
		var dirs []string
		_ = filepath.WalkDir(d, func(p string, de os.DirEntry, err error) error {
			if err == nil && de.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !os.IsNotExist(err) {
				forced = append(forced, fmt.Sprintf("cgroup %s: %v", dirs[i], err))
			}
		}
	}
	if data, err := os.ReadFile(filepath.Join(n.dir, "made-dirs")); err == nil {
		lines := strings.Fields(string(data))
		for i := len(lines) - 1; i >= 0; i-- {
			_ = n.host("rmdir", lines[i])
		}
	}
	if left := n.hostMounts(); len(left) > 0 {
		forced = append(forced, fmt.Sprintf("mounts still there, %s kept: %v", n.dir, left))
		return forced
	}
	if err := os.RemoveAll(n.dir); err != nil {
		// This test's own mount namespace holds copies of mounts that were
		// on the host when it started (an earlier, killed run's): they are
		// outside our root, so unmounted from the namespace's own root.
		_ = exec.Command("nsenter", fmt.Sprintf("--mount=/proc/%d/ns/mnt", os.Getpid()), "--", "sh", "-c",
			`awk -v d="$1" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r |
			while read -r mp; do umount -l "$mp"; done`, "sh", n.dir).Run()
		if err := os.RemoveAll(n.dir); err != nil {
			forced = append(forced, err.Error())
		} else {
			forced = append(forced, "copies of an earlier run's mounts in this test's namespace")
		}
	}
	return forced
}
