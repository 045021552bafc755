package request

import (
	"regexp"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// wantInvalid fails t unless err is InvalidArgument and its message names
// what (a field or parameter).
func wantInvalid(t *testing.T, err error, what string) {
	t.Helper()
	if c := csierr.Code(err); c != codes.InvalidArgument {
		t.Fatalf("error %v has code %v, want InvalidArgument", err, c)
	}
	if !strings.Contains(err.Error(), what) {
		t.Fatalf("error %q does not name %s", err, what)
	}
}

// FuzzRoundedSize: for any pair of int64s the size is a positive whole
// number of MiB within the range asked for (and within MaxVolumeSize), the
// smallest such size for a required size; a range no size fits is
// OutOfRange, a malformed one InvalidArgument.
func FuzzRoundedSize(f *testing.F) {
	for _, c := range [][2]int64{
		{0, 0}, {1, 0}, {MiB, 0}, {MiB + 1, 0}, {0, 10 * MiB}, {MiB + 1, 2*MiB + 5}, {MiB + 1, MiB + 2},
		{5 * MiB, MiB}, {-1, 0}, {0, -1}, {0, MiB - 1}, {0, 3<<30 + 5}, {MaxVolumeSize, 0}, {MaxVolumeSize + 1, 0},
		{MaxVolumeSize - 1, 1<<63 - 1}, {1<<63 - 1, 1<<63 - 1}, {-1 << 63, -1 << 63},
	} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, req, limit int64) {
		got, err := RoundedSize(&csi.CapacityRange{RequiredBytes: req, LimitBytes: limit})
		// The model: the smallest whole MiB at or above the requirement (1
		// GiB, or the limit if smaller, when there is none), if one lies at
		// or below the limit.
		var code codes.Code
		var want int64
		switch {
		case req < 0 || limit < 0 || limit > 0 && req > limit:
			code = codes.InvalidArgument
		case req > MaxVolumeSize:
			code = codes.OutOfRange
		case req > 0:
			want = req / MiB * MiB
			if want < req {
				want += MiB
			}
			if limit > 0 && want > limit {
				code, want = codes.OutOfRange, 0
			}
		case limit == 0 || limit >= DefaultVolumeSize:
			want = DefaultVolumeSize
		case limit >= MiB:
			want = limit / MiB * MiB
		default:
			code = codes.OutOfRange
		}
		if c := csierr.Code(err); c != code || got != want {
			t.Fatalf("RoundedSize(%d, %d) = %d, %v (%v); want %d, %v", req, limit, got, err, c, want, code)
		}
		if err != nil {
			if !strings.Contains(err.Error(), "capacity_range") {
				t.Fatalf("error %q does not name capacity_range", err)
			}
			return
		}
		if got <= 0 || got%MiB != 0 || got > MaxVolumeSize || got < req || limit > 0 && got > limit {
			t.Fatalf("RoundedSize(%d, %d) = %d", req, limit, got)
		}
		if !Fits(got, &csi.CapacityRange{RequiredBytes: req, LimitBytes: limit}) {
			t.Fatalf("RoundedSize(%d, %d) = %d, which does not fit the range", req, limit, got)
		}
	})
}

// credentialOptions are the option names through which an identity, a key
// or the monitors would reach a helper: no checked option may have one.
var credentialOptions = map[string]bool{
	"name": true, "id": true, "user": true, "n": true, "i": true,
	"secret": true, "secretfile": true, "key": true, "keyfile": true, "keyring": true, "k": true,
	"mon_host": true, "mon_addr": true, "m": true, "conf": true, "c": true,
}

// checkSafeOption asserts what an accepted option may be: printable ASCII
// without spaces, separators, quotes or backslashes, not starting with '-',
// not a credential option however spelled; and that it stays one item in
// every syntax the helpers use.
func checkSafeOption(t *testing.T, opt string) {
	t.Helper()
	for i := 0; i < len(opt); i++ {
		if c := opt[i]; c <= ' ' || c >= 0x7f || strings.ContainsRune(`,;"'\`, rune(c)) {
			t.Fatalf("accepted option %q holds %q", opt, c)
		}
	}
	if strings.HasPrefix(opt, "-") {
		t.Fatalf("accepted option %q starts with '-'", opt)
	}
	name, _, _ := strings.Cut(opt, "=")
	if credentialOptions[strings.ToLower(strings.ReplaceAll(name, "-", "_"))] {
		t.Fatalf("accepted the credential option %q", opt)
	}
	// Inside a kernel option list (comma-separated) and a krbd add
	// request (space-separated), the option is one item, and the items
	// the driver put around it stay where they are.
	list := "name=u,secretfile=/proc/self/fd/3," + opt + ",ro"
	if items := strings.Split(list, ","); len(items) != 4 || items[2] != opt || items[3] != "ro" {
		t.Fatalf("option %q splits %q into %q", opt, list, items)
	}
	req := "10.0.0.1:6789 name=u," + opt + " rbd image -"
	if f := strings.Fields(req); len(f) != 5 || f[2] != "rbd" || f[3] != "image" {
		t.Fatalf("option %q splits the request %q into %q", opt, req, f)
	}
}

// FuzzSafeOption: SafeOption accepts only options that stay one option
// without a credential in it, and refuses with InvalidArgument naming the
// field.
func FuzzSafeOption(f *testing.F) {
	for _, s := range []string{"noatime", "queue_depth=128", "context=system_u:object_r:tmp_t:s0", "ms_mode=prefer-crc",
		"name=admin", "Secret=x", "--keyring=/etc/ceph/keyring", "mon-host=10.0.0.9", "a,name=admin", "a b", "a\tb",
		"a\nb", "a\vb", "a\x00b", "a;b", `context="x`, "debug", "=", "", "-o", "id", "\u00a0", "ro\x7f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, opt string) {
		err := SafeOption("volume_capability.mount.mount_flags", opt)
		if err != nil {
			wantInvalid(t, err, "volume_capability.mount.mount_flags")
			return
		}
		checkSafeOption(t, opt)
	})
}

// FuzzSafeOptionList: an accepted list is made of accepted options once
// split and trimmed the way the mappers and mount helpers split it, and
// re-joining those items gives the same items (nothing hides in a
// separator).
func FuzzSafeOptionList(f *testing.F) {
	for _, s := range []string{"noatime,nodiratime", " a, b ,,c ", "lock_on_read,queue_depth=1024", "a,name=admin",
		"a, b c", "ro,--id=admin", "x,\tkey=k", "allow_other", "", ",", "a,\"b,c\""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, list string) {
		err := SafeOptionList("volume_context.kernelMountOptions", list)
		if err != nil {
			wantInvalid(t, err, "volume_context.kernelMountOptions")
			return
		}
		var items []string
		for _, o := range strings.Split(list, ",") {
			if o = strings.TrimSpace(o); o != "" {
				checkSafeOption(t, o)
				items = append(items, o)
			}
		}
		again := strings.Split(strings.Join(items, ","), ",")
		if len(items) > 0 && strings.Join(again, "\x00") != strings.Join(items, "\x00") {
			t.Fatalf("list %q: items %q re-split as %q", list, items, again)
		}
	})
}

// FuzzSafeValue: an accepted value is one argument and one option value:
// printable ASCII without spaces, separators, quotes or backslashes, and no
// leading '-'.
func FuzzSafeValue(f *testing.F) {
	for _, s := range []string{"myfs", "/volumes/csi/csi-vol-1/uuid", "fs,name=admin", "fs name", "-fs", "fs\n", "", "a=b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		err := SafeValue("volume_context.fsName", v)
		if err != nil {
			wantInvalid(t, err, "volume_context.fsName")
			return
		}
		for i := 0; i < len(v); i++ {
			if c := v[i]; c <= ' ' || c >= 0x7f || strings.ContainsRune(`,;"'\`, rune(c)) {
				t.Fatalf("accepted value %q holds %q", v, c)
			}
		}
		if strings.HasPrefix(v, "-") {
			t.Fatalf("accepted value %q starts with '-'", v)
		}
		if items := strings.Split("mds_namespace="+v+",ro", ","); len(items) != 2 {
			t.Fatalf("value %q splits an option list into %q", v, items)
		}
	})
}

var prefixChars = regexp.MustCompile(`^[A-Za-z0-9._][A-Za-z0-9._-]{0,63}$`)

// FuzzNamePrefix: an absent or empty prefix is the default; any other is
// accepted only as 1 to 64 letters, digits, '.', '_' and '-' (not first),
// which no image spec, path or option list can split; a refusal is
// InvalidArgument naming the parameter.
func FuzzNamePrefix(f *testing.F) {
	for _, s := range []string{"", "csi-vol-", "k8s.", "a/b", "a@b", "a b", "a,b", "-x", strings.Repeat("p", 64), strings.Repeat("p", 65), "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got, err := NamePrefix(map[string]string{"volumeNamePrefix": v}, "volumeNamePrefix", DefaultVolumePrefix)
		if err != nil {
			wantInvalid(t, err, `"volumeNamePrefix"`)
			return
		}
		if v == "" {
			if got != DefaultVolumePrefix {
				t.Fatalf("empty prefix gave %q, want the default", got)
			}
			return
		}
		if got != v || !prefixChars.MatchString(got) {
			t.Fatalf("NamePrefix(%q) = %q", v, got)
		}
	})
}

// FuzzValidPoolName: an accepted pool (or namespace) name is 1 to 255 bytes
// with no control character, no separator of an image spec, option list or
// command line, and no leading '-'; a refusal is InvalidArgument naming the
// parameter.
func FuzzValidPoolName(f *testing.F) {
	for _, s := range []string{"rbd", "replicapool", "ec-data.1", "", "a/b", "a@b", "a b", "a,b", "a=b", "-x", "rbd\x00", "rbd\v", strings.Repeat("p", 256), "pool-é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		check := func(err error, param string, empty bool) {
			t.Helper()
			if err != nil {
				wantInvalid(t, err, `"`+param+`"`)
				return
			}
			if v == "" {
				if !empty {
					t.Fatalf("%s accepted the empty name", param)
				}
				return
			}
			if len(v) > 255 || strings.HasPrefix(v, "-") || strings.ContainsAny(v, "/@ ,;=") {
				t.Fatalf("%s accepted %q", param, v)
			}
			for i := 0; i < len(v); i++ {
				if v[i] < ' ' || v[i] == 0x7f {
					t.Fatalf("%s accepted %q with the control character %q", param, v, v[i])
				}
			}
			if spec := strings.Split("pool/"+v+"/image@snap", "/"); len(spec) != 3 || strings.Contains(spec[1], "@") {
				t.Fatalf("%s %q splits an image spec into %q", param, v, spec)
			}
		}
		check(ValidPoolName("dataPool", v), "dataPool", false)
		check(ValidNamespace("radosNamespace", v), "radosNamespace", true)
	})
}

var (
	base64Chars = regexp.MustCompile(`^[A-Za-z0-9+/=]+$`)
	userIDChars = regexp.MustCompile(`^[A-Za-z0-9._][A-Za-z0-9._-]*$`)
)

// FuzzCredentials: the credentials are the first pair given in full; the
// user ID is a safe token (with any "client." prefix removed) and the key
// base64 text; a refusal is InvalidArgument about the secrets that never
// shows the key.
func FuzzCredentials(f *testing.F) {
	const key = "AQBp" + "bWFnaW5lZCBrZXkgZm9yIHRlc3RzIG9ubHk="
	f.Add("csi-rbd-node", key, "", "")
	f.Add("client.admin", key, "csi-user", key)
	f.Add("", "", "csi-user", key)
	f.Add("admin,secret=x", key, "", "")
	f.Add("admin user", key, "", "")
	f.Add("-n", key, "", "")
	f.Add("client.", key, "", "")
	f.Add("admin", "not a key!", "", "")
	f.Add("admin", key+"\n", "", "")
	f.Fuzz(func(t *testing.T, adminID, adminKey, userID, userKey string) {
		secrets := map[string]string{"adminID": adminID, "adminKey": adminKey, "userID": userID, "userKey": userKey}
		c, err := Credentials(secrets, AdminSecret, UserSecret)
		if err != nil {
			wantInvalid(t, err, "secrets")
			for _, k := range []string{adminKey, userKey} {
				if len(k) >= 8 && strings.Contains(err.Error(), k) {
					t.Fatalf("error %q shows a key", err)
				}
			}
			return
		}
		wantID, wantKey := adminID, adminKey
		if adminID == "" || adminKey == "" {
			wantID, wantKey = userID, userKey
		}
		if c.ID != strings.TrimPrefix(wantID, "client.") || c.Key != wantKey {
			t.Fatalf("Credentials = %s/%q, want the first full pair %q/%q", c, c.Key, wantID, wantKey)
		}
		if !userIDChars.MatchString(c.ID) {
			t.Fatalf("accepted the user ID %q", c.ID)
		}
		if !base64Chars.MatchString(c.Key) {
			t.Fatalf("accepted the key %q", c.Key)
		}
	})
}

var digestForm = regexp.MustCompile(`^v1:[0-9a-f]{32}$`)

// FuzzDigest: the digest is "v1:" and 32 hex digits; it does not depend on
// the order the parameters were set in nor on the sidecars' keys; any
// change of a part, a key or a value that is not a sidecar's changes it,
// and so does moving text between parts and parameters.
func FuzzDigest(f *testing.F) {
	f.Add("pool", "rbd", "imageFeatures", "layering", "csi.storage.k8s.io/fstype", "ext4", "size:1073741824")
	f.Add("a", "b;c", "a=b", "", "", "", "")
	f.Add("clusterID", "c1", "csi.storage.k8s.io/provisioner-secret-name", "s", "1:a", "b", "snapshot:x")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3, v3, part string) {
		keys, values := []string{k1, k2, k3}, []string{v1, v2, v3}
		forward, backward := map[string]string{}, map[string]string{}
		for i := range keys {
			forward[keys[i]] = values[i]
		}
		for i := len(keys) - 1; i >= 0; i-- {
			if _, dup := backward[keys[i]]; !dup {
				backward[keys[i]] = forward[keys[i]]
			}
		}
		d := Digest(forward, part)
		if !digestForm.MatchString(d) {
			t.Fatalf("digest %q", d)
		}
		if b := Digest(backward, part); b != d {
			t.Fatalf("the same parameters in another order: %q vs %q", b, d)
		}
		sidecar := clone(forward)
		sidecar["csi.storage.k8s.io/pvc/name"] = v1 + "pvc"
		if s := Digest(sidecar, part); s != d {
			t.Fatalf("a sidecar key changed the digest")
		}
		if Digest(forward, part+"x") == d || Digest(forward, part, "") == d {
			t.Fatalf("another part kept the digest %q", d)
		}
		for k, v := range forward {
			if strings.HasPrefix(k, "csi.storage.k8s.io/") {
				continue
			}
			changed := clone(forward)
			changed[k] = v + "x"
			if Digest(changed, part) == d {
				t.Fatalf("changing %q=%q kept the digest", k, v)
			}
			renamed := clone(forward)
			delete(renamed, k)
			if _, taken := renamed[k+"x"]; !taken {
				renamed[k+"x"] = v
				if Digest(renamed, part) == d {
					t.Fatalf("renaming %q kept the digest", k)
				}
			}
			removed := clone(forward)
			delete(removed, k)
			if Digest(removed, part) == d {
				t.Fatalf("removing %q kept the digest", k)
			}
			// The same text as a part instead of a parameter.
			if Digest(removed, part, k+"="+v) == d || Digest(removed, part+k+"="+v) == d {
				t.Fatalf("moving %q=%q into the parts kept the digest", k, v)
			}
		}
	})
}

func clone(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
