// Package luks drives cryptsetup for LUKS2-encrypted block devices:
// format, open, close, resize and status.
//
// It runs the cryptsetup program rather than binding libcryptsetup: the
// binary is what ceph-csi runs too (so both lay out the header the same
// way), it needs no cgo binding of our own, and a hung device cannot wedge
// the plugin (keyexec bounds and, if need be, abandons the run). The
// passphrase reaches cryptsetup only as a sealed in-memory file on
// descriptor 3 (--key-file /proc/self/fd/3), read whole as key-file bytes,
// which is what ceph-csi's "-d /dev/stdin" gives too: never argv, the
// environment or a file on disk.
package luks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/leanceph/cephcsi/internal/keyexec"
)

// ErrWrongKey marks a passphrase that opens no key slot of the header.
var ErrWrongKey = errors.New("the passphrase opens no key slot of the LUKS header")

// MapperDir is where device-mapper devices appear.
const MapperDir = "/dev/mapper"

// timeout bounds one cryptsetup run: a format or open spends about two
// seconds in the key derivation (more on a slow or emulated CPU).
const timeout = 3 * time.Minute

// Exit statuses of cryptsetup (cryptsetup(8), RETURN CODES).
const (
	exitNoPermission = 2 // a wrong passphrase
	exitWrongDevice  = 4 // no such device, or not active
)

// pbkdfMemoryKiB caps the Argon2 memory of a key slot at 32 MiB, as
// ceph-csi does, so that opening works in a memory-limited plugin.
const pbkdfMemoryKiB = 32 << 10

// Options are how a new header is made: StorageClass parameters
// encryptionCipher, encryptionKeySize and encryptionSectorSize. Zero values
// are cryptsetup's defaults (aes-xts-plain64, a 512-bit key, the sector
// size it finds best for the device).
type Options struct {
	Cipher     string
	KeySize    int
	SectorSize int
}

// ciphers are the ciphers offered: XTS modes with the plain64 IV, which
// need no integrity layer (dm-integrity, which rules out resizing, is not
// offered).
var ciphers = []string{"aes-xts-plain64", "serpent-xts-plain64", "twofish-xts-plain64"}

// ParamError is a bad encryption parameter; Param names it.
type ParamError struct {
	Param, Msg string
}

func (e *ParamError) Error() string { return fmt.Sprintf("parameter %q: %s", e.Param, e.Msg) }

// ParseOptions reads the three parameters ("" for the default each). A bad
// value is a *ParamError.
func ParseOptions(cipher, keySize, sectorSize string) (Options, error) {
	var o Options
	if cipher = strings.TrimSpace(cipher); cipher != "" {
		ok := false
		for _, c := range ciphers {
			ok = ok || c == cipher
		}
		if !ok {
			return o, &ParamError{"encryptionCipher", fmt.Sprintf("%q is not one of %s", cipher, strings.Join(ciphers, ", "))}
		}
		o.Cipher = cipher
	}
	if keySize = strings.TrimSpace(keySize); keySize != "" {
		n, err := strconv.Atoi(keySize)
		// XTS splits the key in two: 256 bits for AES-128, 512 for AES-256.
		if err != nil || (n != 256 && n != 512) {
			return o, &ParamError{"encryptionKeySize", fmt.Sprintf("%q is not 256 or 512 (bits; XTS uses half for each of its two keys)", keySize)}
		}
		o.KeySize = n
	}
	if sectorSize = strings.TrimSpace(sectorSize); sectorSize != "" {
		n, err := strconv.Atoi(sectorSize)
		if err != nil || n < 512 || n > 4096 || bits.OnesCount(uint(n)) != 1 {
			return o, &ParamError{"encryptionSectorSize", fmt.Sprintf("%q is not a power of two from 512 to 4096", sectorSize)}
		}
		o.SectorSize = n
	}
	return o, nil
}

// Crypt runs cryptsetup.
type Crypt struct {
	Runner keyexec.Runner
	// Path is the cryptsetup program; "" finds it in PATH.
	Path string
	// IterTime is how long unlocking a new key slot takes (cryptsetup's
	// --iter-time); 0 is cryptsetup's default, 2 s. Tests shorten it.
	IterTime time.Duration
}

func (c Crypt) run(ctx context.Context, key []byte, args ...string) (keyexec.Result, error) {
	path := c.Path
	if path == "" {
		path = "cryptsetup"
	}
	return c.Runner.Run(ctx, keyexec.Command{Path: path, Args: args, Secret: key, Timeout: timeout})
}

// exitStatus is the exit status of a failed run, -1 when it did not exit.
func exitStatus(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// Format writes a new LUKS2 header to dev whose only key slot opens with
// key. Everything on dev is lost: callers check that it holds nothing.
func (c Crypt) Format(ctx context.Context, dev string, key []byte, o Options) error {
	args := []string{"-q", "luksFormat", "--type", "luks2", "--hash", "sha256",
		"--pbkdf-memory", strconv.Itoa(pbkdfMemoryKiB)}
	if o.Cipher != "" {
		args = append(args, "--cipher", o.Cipher)
	}
	if o.KeySize != 0 {
		args = append(args, "--key-size", strconv.Itoa(o.KeySize))
	}
	if o.SectorSize != 0 {
		args = append(args, "--sector-size", strconv.Itoa(o.SectorSize))
	}
	if c.IterTime > 0 {
		args = append(args, "--iter-time", strconv.FormatInt(c.IterTime.Milliseconds(), 10))
	}
	args = append(args, "--key-file", keyexec.KeyFilePath, dev)
	if _, err := c.run(ctx, key, args...); err != nil {
		return fmt.Errorf("formatting %s with LUKS2: %w", dev, err)
	}
	return nil
}

// Open maps dev, opened with key, at /dev/mapper/<name>. The volume key
// goes into the device-mapper table, not the kernel keyring
// (--disable-keyring), as ceph-csi does: a later resize then needs no
// passphrase, which NodeExpandVolume does not have. A key that opens no
// slot is ErrWrongKey.
func (c Crypt) Open(ctx context.Context, dev, name string, key []byte, readOnly bool) error {
	args := []string{"luksOpen", dev, name, "--disable-keyring", "--key-file", keyexec.KeyFilePath}
	if readOnly {
		args = append(args, "--readonly")
	}
	if _, err := c.run(ctx, key, args...); err != nil {
		if exitStatus(err) == exitNoPermission {
			return fmt.Errorf("opening %s: %w", dev, ErrWrongKey)
		}
		return fmt.Errorf("opening %s as %s: %w", dev, name, err)
	}
	return nil
}

// TestKey checks that key opens a key slot of dev's header, without
// mapping anything (no device-mapper needed). A wrong key is ErrWrongKey.
func (c Crypt) TestKey(ctx context.Context, dev string, key []byte) error {
	if _, err := c.run(ctx, key, "luksOpen", "--test-passphrase", dev, "--key-file", keyexec.KeyFilePath); err != nil {
		if exitStatus(err) == exitNoPermission {
			return fmt.Errorf("testing the key of %s: %w", dev, ErrWrongKey)
		}
		return fmt.Errorf("testing the key of %s: %w", dev, err)
	}
	return nil
}

// Status reports whether the mapping name is active and which device it
// is backed by.
func (c Crypt) Status(ctx context.Context, name string) (active bool, backing string, err error) {
	res, err := c.run(ctx, nil, "status", name)
	if err != nil {
		if exitStatus(err) == exitWrongDevice {
			return false, "", nil
		}
		return false, "", fmt.Errorf("status of %s: %w", name, err)
	}
	for _, line := range strings.Split(res.Stdout, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && strings.TrimSpace(k) == "device" {
			return true, strings.TrimSpace(v), nil
		}
	}
	return true, "", nil
}

// Close removes the mapping name; one not active is fine.
func (c Crypt) Close(ctx context.Context, name string) error {
	active, _, err := c.Status(ctx, name)
	if err != nil || !active {
		return err
	}
	if _, err := c.run(ctx, nil, "luksClose", name); err != nil {
		if exitStatus(err) == exitWrongDevice {
			return nil
		}
		return fmt.Errorf("closing %s: %w", name, err)
	}
	return nil
}

// Resize grows the active mapping name to its backing device.
func (c Crypt) Resize(ctx context.Context, name string) error {
	if _, err := c.run(ctx, nil, "resize", name); err != nil {
		return fmt.Errorf("resizing %s: %w", name, err)
	}
	return nil
}

// IsLUKS reports whether dev starts with a LUKS header.
func (c Crypt) IsLUKS(ctx context.Context, dev string) (bool, error) {
	if _, err := c.run(ctx, nil, "isLuks", dev); err != nil {
		if exitStatus(err) == 1 {
			return false, nil
		}
		return false, fmt.Errorf("checking %s for a LUKS header: %w", dev, err)
	}
	return true, nil
}

// mapperPrefix names mappings as ceph-csi does, luks-rbd-<volume ID>, so
// that either driver finds a mapping the other made on a node.
const mapperPrefix = "luks-rbd-"

// maxNameLen is device-mapper's limit on a name (DM_NAME_LEN less the NUL).
const maxNameLen = 127

// MapperName is the mapping name of a volume. A volume ID too long for a
// device-mapper name (ceph-csi cannot map those) is replaced by its
// SHA-256, which keeps names of different volumes apart.
func MapperName(volumeID string) string {
	name := mapperPrefix + volumeID
	if len(name) > maxNameLen || strings.Contains(volumeID, "/") {
		sum := sha256.Sum256([]byte(volumeID))
		name = mapperPrefix + hex.EncodeToString(sum[:])
	}
	return name
}

// MapperPath is the device of the mapping name.
func MapperPath(name string) string { return filepath.Join(MapperDir, name) }
