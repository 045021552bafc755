package cephfs

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/service"
)

// The fuzzed node's settings: the options config.json and the command line
// give (trusted, and safe), the node secret.
const (
	fuzzMonitors    = "10.0.0.1:6789,10.0.0.2:6789"
	fuzzConfigFuse  = "allow_other"
	fuzzCmdlineKern = "recover_session=clean"
	fuzzUserID      = "csi-cephfs-node"
	fuzzStagingPath = "/var/lib/kubelet/plugins/kubernetes.io/csi/cephfs.csi.ceph.com/x/globalmount"
	fuzzCredentials = "name id user secret secretfile key keyfile keyring conf mon_host mon_addr"
)

func fuzzNodeServer(f *testing.F) *NodeServer {
	dir := f.TempDir()
	cfg := filepath.Join(dir, "config.json")
	data := `[{"clusterID":"c1","monitors":["10.0.0.1:6789","10.0.0.2:6789"],"cephFS":{"fuseMountOptions":"` + fuzzConfigFuse + `"}}]`
	if err := os.WriteFile(cfg, []byte(data), 0o600); err != nil {
		f.Fatal(err)
	}
	return &NodeServer{Deps: &service.Deps{
		Options:  &config.Options{NodeID: "node-1", KernelMountOpts: fuzzCmdlineKern},
		Clusters: config.NewClusters(cfg),
	}}
}

// checkOptionItems asserts that each item of a helper's option list is one
// option that carries no credential, and returns the items.
func checkOptionItems(t *testing.T, list string) []string {
	t.Helper()
	items := strings.Split(list, ",")
	for _, o := range items {
		for i := 0; i < len(o); i++ {
			if c := o[i]; c <= ' ' || c >= 0x7f || strings.ContainsRune(`;"'\`, rune(c)) {
				t.Fatalf("option list %q: item %q holds %q", list, o, c)
			}
		}
	}
	return items
}

func credentialOption(o string) bool {
	name, _, _ := strings.Cut(strings.TrimLeft(o, "-"), "=")
	name = strings.ToLower(strings.ReplaceAll(name, "-", "_"))
	return slices.Contains(strings.Fields(fuzzCredentials), name)
}

// FuzzStageMountOptions: whatever a volume context and a capability's mount
// flags hold, a NodeStageVolume request decodes (never panicking) either to
// an InvalidArgument naming what is wrong, or to a mount.ceph and a
// ceph-fuse command line of the fixed shape, where the options given are
// whole items of the option list after the driver's own, none naming an
// identity, a key or monitors, none starting with '-', and the filesystem
// name and root path end nothing.
func FuzzStageMountOptions(f *testing.F) {
	type seed struct {
		fs, root, mounter, kernelOpts, fuseOpts, flag1, flag2 string
		static                                                bool
	}
	for _, s := range []seed{
		{fs: "myfs", root: "/volumes/csi/csi-vol-1/uuid", mounter: "kernel", kernelOpts: "ms_mode=secure,noatime", flag1: "debug"},
		{fs: "myfs", root: "/volumes/csi/csi-vol-1/uuid", mounter: "fuse", fuseOpts: "debug", flag1: "ro"},
		{fs: "myfs", root: "/static/dir", static: true, mounter: "kernel"},
		{fs: "myfs", root: "/r", mounter: "kernel", kernelOpts: "name=admin,secretfile=/etc/ceph/admin.secret"},
		{fs: "myfs", root: "/r", mounter: "kernel", kernelOpts: "noatime secret=AQD"},
		{fs: "myfs", root: "/r", mounter: "fuse", fuseOpts: "--keyring=/etc/ceph/keyring"},
		{fs: "myfs", root: "/r", mounter: "fuse", fuseOpts: "--log_file=/etc/passwd"},
		{fs: "myfs", root: "/r", mounter: "kernel", kernelOpts: "mon-addr=10.9.9.9"},
		{fs: "myfs", root: "/r", mounter: "kernel", kernelOpts: `context="x`},
		{fs: "myfs,name=admin", root: "/r", mounter: "kernel"},
		{fs: "myfs", root: "/r,name=admin", mounter: "kernel"},
		{fs: "myfs", root: "relative", mounter: "fuse"},
		{fs: "myfs", root: "/r\n", mounter: "fuse"},
		{fs: "myfs", root: "/r", mounter: "kernel", flag1: "name=admin"},
		{fs: "myfs", root: "/r", mounter: "kernel", flag1: "a,b"},
		{fs: "myfs", root: "/r", mounter: "nfs"},
		{fs: "", root: "/r"},
	} {
		f.Add(s.fs, s.root, s.static, s.mounter, s.kernelOpts, s.fuseOpts, s.flag1, s.flag2)
	}
	n := fuzzNodeServer(f)
	key := "AQD2" + "bGFtYmRhLWtleS1mb3ItdGVzdHMtb25seQ=="
	f.Fuzz(func(t *testing.T, fs, root string, static bool, mounter, kernelOpts, fuseOpts, flag1, flag2 string) {
		vc := map[string]string{"clusterID": "c1", "fsName": fs, "mounter": mounter,
			"kernelMountOptions": kernelOpts, "fuseMountOptions": fuseOpts}
		if static {
			vc["staticVolume"], vc["rootPath"] = "true", root
		} else {
			vc["subvolumePath"] = root
		}
		var flags []string
		for _, fl := range []string{flag1, flag2} {
			if fl != "" {
				flags = append(flags, fl)
			}
		}
		req := &csi.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: fuzzStagingPath,
			VolumeCapability: &csi.VolumeCapability{
				AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: flags}},
				AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}},
			VolumeContext: vc, Secrets: map[string]string{"userID": fuzzUserID, "userKey": key}}
		// As NodeStageVolume does: the capability, then the volume context.
		err := request.ValidateCapability("volume_capability", req.GetVolumeCapability(), true)
		var sr *stageRequest
		if err == nil {
			sr, err = n.decodeStage(context.Background(), req)
		}
		if err != nil {
			if csierr.Code(err) != codes.InvalidArgument {
				t.Fatalf("error %v has code %v, want InvalidArgument", err, csierr.Code(err))
			}
			if !strings.Contains(err.Error(), "volume_context") && !strings.Contains(err.Error(), "volume_capability") {
				t.Fatalf("error %q names neither the volume context nor the capability", err)
			}
			return
		}
		sr.spec.Target = fuzzStagingPath
		s := sr.spec
		if s.FsName != fs || s.Root != root || s.Creds.ID != fuzzUserID {
			t.Fatalf("decoded %+v from %q", s, vc)
		}
		if !strings.HasPrefix(s.Root, "/") {
			t.Fatalf("accepted the root %q", s.Root)
		}
		checkInert(t, "fsName", s.FsName)
		checkInert(t, "root", s.Root)
		given := slices.Concat(splitOptions(kernelOpts), flags)
		base := []string{fuzzCmdlineKern}
		if sr.mounter == mounterFuse {
			given, base = slices.Concat(splitOptions(fuseOpts), flags), []string{fuzzConfigFuse}
		}
		for _, o := range given {
			if o == "" || strings.HasPrefix(o, "-") || credentialOption(o) {
				t.Fatalf("accepted the option %q", o)
			}
		}
		if want := slices.Concat(base, given); !slices.Equal(s.Options, want) {
			t.Fatalf("options %q, want %q", s.Options, want)
		}

		// mount.ceph: the source, the target, and one option list of the
		// driver's three options and then the given ones, item for item.
		k := kernelArgs(s)
		if len(k) != 4 || k[0] != fuzzMonitors+":"+s.Root || k[1] != fuzzStagingPath || k[2] != "-o" {
			t.Fatalf("mount.ceph arguments %q", k)
		}
		items := checkOptionItems(t, k[3])
		driver := []string{"name=" + fuzzUserID, "secretfile=" + keyFD, "mds_namespace=" + s.FsName}
		if !slices.Equal(items, slices.Concat(driver, s.Options)) {
			t.Fatalf("mount.ceph options %q are not %q then %q", items, driver, s.Options)
		}
		for _, o := range items[3:] {
			if credentialOption(o) {
				t.Fatalf("mount.ceph options %q carry %q", k[3], o)
			}
		}

		// ceph-fuse: the driver's arguments in place, the options as one
		// -o list whose first item does not look like an argument.
		fa := fuseArgs(s)
		want := []string{fuzzStagingPath, "-c", "/dev/null", "-m", fuzzMonitors, "--id", fuzzUserID, "--keyring", "/dev/null",
			"--keyfile", keyFD, "--client_fs=" + s.FsName, "-r", s.Root}
		if len(s.Options) > 0 {
			want = append(want, "-o", strings.Join(s.Options, ","))
		}
		if !slices.Equal(fa, want) {
			t.Fatalf("ceph-fuse arguments %q, want %q", fa, want)
		}
		if len(s.Options) > 0 {
			list := fa[len(fa)-1]
			if strings.HasPrefix(list, "-") {
				t.Fatalf("ceph-fuse -o %q reads as an argument", list)
			}
			for _, o := range checkOptionItems(t, list) {
				if credentialOption(o) {
					t.Fatalf("ceph-fuse options %q carry %q", list, o)
				}
			}
		}
	})
}
