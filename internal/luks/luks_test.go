package luks

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leanceph/cephcsi/internal/keyexec"
)

// recorder runs commands for real and keeps what ran.
type recorder struct {
	cmds []keyexec.Command
}

func (r *recorder) Run(ctx context.Context, c keyexec.Command) (keyexec.Result, error) {
	r.cmds = append(r.cmds, c)
	return keyexec.Exec{}.Run(ctx, c)
}

func needCryptsetup(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		t.Skip("no cryptsetup here (the dev root has it: scripts/in-root)")
	}
}

// image is a file big enough for a LUKS2 header and some data.
func image(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 32<<20); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFormatAndKeysOnAFile(t *testing.T) {
	needCryptsetup(t)
	ctx := context.Background()
	r := &recorder{}
	c := Crypt{Runner: r, IterTime: 100 * time.Millisecond}
	img := image(t)
	key := []byte("bXktZGVrLWJ5dGVzLTIwYnl0ZXM=")
	if ok, err := c.IsLUKS(ctx, img); err != nil || ok {
		t.Fatalf("blank file IsLUKS = %v, %v", ok, err)
	}
	if err := c.Format(ctx, img, key, Options{Cipher: "aes-xts-plain64", KeySize: 256, SectorSize: 4096}); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.IsLUKS(ctx, img); err != nil || !ok {
		t.Fatalf("after format IsLUKS = %v, %v", ok, err)
	}
	if err := c.TestKey(ctx, img, key); err != nil {
		t.Fatalf("the key does not open what it formatted: %v", err)
	}
	err := c.TestKey(ctx, img, []byte("not-the-key"))
	if !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong key: %v, want ErrWrongKey", err)
	}
	// A header as ceph-csi writes it: the passphrase on standard input.
	out, err := exec.Command("cryptsetup", "luksDump", img).CombinedOutput()
	if err != nil {
		t.Fatalf("luksDump: %v: %s", err, out)
	}
	for _, want := range []string{"Version:       \t2", "aes-xts-plain64", "256 bits", "sector: 4096", "argon2id", "Memory:     32768"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("luksDump lacks %q:\n%s", want, out)
		}
	}
	for _, cmd := range r.cmds {
		for _, a := range cmd.Args {
			if strings.Contains(a, string(key)) {
				t.Fatalf("the key is in argv: %v", cmd.Args)
			}
		}
		if cmd.Key != "" {
			t.Fatalf("the key went as a string")
		}
	}
}

// TestOpensCephCSIHeader formats as ceph-csi does (cryptsetup reading the
// passphrase from standard input, LUKS2, sha256, 32 MiB of Argon2) and
// checks the passphrase opens it through this package.
func TestOpensCephCSIHeader(t *testing.T) {
	needCryptsetup(t)
	img := image(t)
	pass := "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg="
	cmd := exec.Command("cryptsetup", "-q", "luksFormat", "--type", "luks2", "--hash", "sha256", "--pbkdf-memory", "32768", img, "-d", "/dev/stdin")
	cmd.Stdin = strings.NewReader(pass)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ceph-csi's format: %v: %s", err, out)
	}
	c := Crypt{Runner: keyexec.Exec{}}
	if err := c.TestKey(context.Background(), img, []byte(pass)); err != nil {
		t.Fatalf("ceph-csi's header does not open with its passphrase here: %v", err)
	}
	// And ceph-csi's open reads what this package formats.
	img2 := image(t)
	if err := c.Format(context.Background(), img2, []byte(pass), Options{}); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command("cryptsetup", "luksOpen", "--test-passphrase", img2, "-d", "/dev/stdin")
	cmd.Stdin = strings.NewReader(pass)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ceph-csi's open refuses this package's header: %v: %s", err, out)
	}
}

func TestParseOptions(t *testing.T) {
	if o, err := ParseOptions("", "", ""); err != nil || o != (Options{}) {
		t.Fatalf("defaults: %+v, %v", o, err)
	}
	if o, err := ParseOptions("serpent-xts-plain64", "512", "4096"); err != nil || o.Cipher != "serpent-xts-plain64" || o.KeySize != 512 || o.SectorSize != 4096 {
		t.Fatalf("%+v, %v", o, err)
	}
	for _, tc := range []struct{ c, k, s, param string }{
		{"aes-cbc-essiv:sha256", "", "", "encryptionCipher"},
		{"aegis128-random", "", "", "encryptionCipher"},
		{"", "128", "", "encryptionKeySize"},
		{"", "x", "", "encryptionKeySize"},
		{"", "", "1000", "encryptionSectorSize"},
		{"", "", "8192", "encryptionSectorSize"},
		{"", "", "256", "encryptionSectorSize"},
	} {
		_, err := ParseOptions(tc.c, tc.k, tc.s)
		var pe *ParamError
		if !errors.As(err, &pe) || pe.Param != tc.param {
			t.Errorf("%+v: %v, want an error naming %s", tc, err, tc.param)
		}
	}
}

func TestMapperName(t *testing.T) {
	id := "0001-0009-rook-ceph-0000000000000002-197480ab-6e0f-11ed-b5c4-6efb82c232c4"
	if got := MapperName(id); got != "luks-rbd-"+id {
		t.Fatalf("MapperName = %q", got)
	}
	long := strings.Repeat("a", 120) + "-1"
	long2 := strings.Repeat("a", 120) + "-2"
	if a, b := MapperName(long), MapperName(long2); len(a) > 127 || a == b {
		t.Fatalf("long names %q %q", a, b)
	}
}
