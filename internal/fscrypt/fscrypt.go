// Package fscrypt encrypts the files of CephFS volumes with the kernel's
// fscrypt, laid out on the volume as ceph-csi lays it out, so that either
// driver's node plugin unlocks the other's volumes and the fscrypt tool
// unlocks them by hand: google/fscrypt's metadata directory (.fscrypt) at
// the root of the mounted subvolume, one protector named "ceph-csi", and a
// v2 policy on the directory "ceph-csi-encrypted" below the root, which is
// what the node publishes to pods.
//
// The key comes from the volume's KMS. The default KMS's passphrase is a
// raw 256-bit protector key (its first 32 bytes, zero-padded, as ceph-csi
// cuts it); the metadata KMS's is a custom passphrase, hashed with Argon2id
// (whole, as current ceph-csi hashes it, or cut or padded to 32 bytes, as
// older releases did).
package fscrypt

import (
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	fsactions "github.com/google/fscrypt/actions"
	fscrypto "github.com/google/fscrypt/crypto"
	fsfilesystem "github.com/google/fscrypt/filesystem"
	fsmetadata "github.com/google/fscrypt/metadata"
)

// Names on the volume, as ceph-csi writes them.
const (
	ProtectorName = "ceph-csi"
	Subdir        = "ceph-csi-encrypted"
)

// keyLen is the length of fscrypt's raw protector keys.
const keyLen = fsmetadata.InternalKeyLen

// Source says how the KMS's secret protects the volume's policy key.
type Source int

const (
	// RawKey: the secret's first 32 bytes, zero-padded, are the key.
	RawKey Source = iota
	// Passphrase: the secret is hashed with Argon2id into the key.
	Passphrase
)

// Errors, for the caller to map to gRPC codes.
var (
	// ErrWrongKey: the secret does not open the volume's protector.
	ErrWrongKey = errors.New("the KMS's secret does not open the volume's fscrypt protector")
	// ErrNotSupported: the mount (kernel, client or filesystem) has no fscrypt.
	ErrNotSupported = errors.New("fscrypt is not supported on this mount")
	// ErrLayout: the volume holds fscrypt metadata or files this package
	// cannot use.
	ErrLayout = errors.New("the volume's fscrypt layout cannot be used")
)

// hashCosts are the Argon2id costs of new passphrase protectors (stored in
// the protector, so unlocking takes whatever costs a volume was made
// with): about 0.1 s and 32 MiB once per stage.
var hashCosts = &fsmetadata.HashingCosts{Time: 4, Memory: 32 << 10, Parallelism: 1, TruncationFixed: true}

func init() {
	// google/fscrypt reports its steps through the standard logger; they
	// name descriptors and paths, never keys, and would only be noise
	// next to klog.
	log.SetOutput(io.Discard)
}

// Unlock makes the encrypted directory of the volume mounted at mountPoint
// usable and returns its path: on the volume's first stage it creates the
// metadata, the protector and the policy and applies the policy to the
// still empty directory; later it unlocks the protector with secret and
// adds the policy key to the filesystem's keyring, which lasts until the
// mount goes. The caller clears secret.
func Unlock(mountPoint string, src Source, secret []byte) (string, error) {
	if err := fsfilesystem.UpdateMountInfo(); err != nil {
		return "", fmt.Errorf("reading the mount table: %w", err)
	}
	mnt, err := fsfilesystem.GetMount(mountPoint)
	if err != nil {
		return "", fmt.Errorf("%s: %w", mountPoint, err)
	}
	if err := mnt.CheckSupport(); err != nil {
		return "", fmt.Errorf("%w: %s (%s): %w", ErrNotSupported, mountPoint, mnt.FilesystemType, err)
	}
	ctx := &fsactions.Context{
		Config: &fsmetadata.Config{
			Source:    fsmetadata.SourceType_raw_key,
			HashCosts: hashCosts,
			Options: &fsmetadata.EncryptionOptions{Padding: 32, Contents: fsmetadata.EncryptionOptions_AES_256_XTS,
				Filenames: fsmetadata.EncryptionOptions_AES_256_CTS, PolicyVersion: 2},
			UseFsKeyringForV1Policies: true,
		},
		Mount:      mnt,
		TargetUser: effectiveUser(),
	}
	if src == Passphrase {
		ctx.Config.Source = fsmetadata.SourceType_custom_passphrase
	}
	keys := candidates(src, secret)
	defer func() {
		for _, k := range keys {
			clear(k)
		}
	}()

	dir := filepath.Join(mountPoint, Subdir)
	policy, err := fsactions.GetPolicyFromPath(ctx, dir)
	if err == nil {
		defer wipe(policy)
		optionFn := func(desc string, options []*fsactions.ProtectorOption) (int, error) {
			for i, o := range options {
				if o.LoadError == nil && o.Name() == ProtectorName {
					return i, nil
				}
			}
			return 0, fmt.Errorf("%w: policy %s of %s has no protector named %q", ErrLayout, desc, dir, ProtectorName)
		}
		if err := policy.Unlock(optionFn, keyFunc(keys)); err != nil {
			return "", unlockError(dir, err)
		}
		return dir, provision(policy, dir)
	}
	if _, statErr := fsmetadata.GetPolicy(dir); statErr == nil {
		// The kernel knows a policy the metadata does not describe.
		return "", fmt.Errorf("%w: %s is encrypted, and its policy is missing from %s: %w", ErrLayout, dir,
			filepath.Join(mountPoint, ".fscrypt"), err)
	}
	return dir, create(ctx, dir, keys)
}

// create sets up a volume's encryption: the directory (empty: files
// written before it is encrypted would stay plain), the metadata, the
// protector (kept from an earlier attempt that stopped half-way) and the
// policy.
func create(ctx *fsactions.Context, dir string, keys [][]byte) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.Mkdir(dir, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", dir, err)
		}
	case err != nil:
		return fmt.Errorf("reading %s: %w", dir, err)
	case len(entries) > 0:
		return fmt.Errorf("%w: %s holds %d entries and is not encrypted", ErrLayout, dir, len(entries))
	}
	var already *fsfilesystem.ErrAlreadySetup
	if err := ctx.Mount.Setup(fsfilesystem.SingleUserWritable); err != nil && !errors.As(err, &already) {
		return fmt.Errorf("creating the fscrypt metadata of %s: %w", ctx.Mount.Path, err)
	}
	protector, err := findProtector(ctx)
	if err != nil {
		return err
	}
	if protector == nil {
		// New protectors get the first key form: the one current ceph-csi
		// makes.
		protector, err = fsactions.CreateProtector(ctx, ProtectorName, keyFunc(keys[:1]), nil)
		if err != nil {
			return fmt.Errorf("creating fscrypt protector %q on %s: %w", ProtectorName, ctx.Mount.Path, err)
		}
	} else if err := protector.Unlock(keyFunc(keys)); err != nil {
		return unlockError(dir, err)
	}
	defer wipe(protector)
	policy, err := fsactions.CreatePolicy(ctx, protector)
	if err != nil {
		return fmt.Errorf("creating the fscrypt policy of %s: %w", dir, err)
	}
	defer wipe(policy)
	if err := provision(policy, dir); err != nil {
		return err
	}
	if err := policy.Apply(dir); err != nil {
		return fmt.Errorf("encrypting %s: %w", dir, err)
	}
	// The policy is an xattr on the directory's inode: make it durable
	// before the first file is written below it.
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }()
	return d.Sync()
}

// findProtector returns the protector named ProtectorName on the mount, nil
// when there is none.
func findProtector(ctx *fsactions.Context) (*fsactions.Protector, error) {
	options, err := ctx.ProtectorOptions()
	if err != nil {
		return nil, fmt.Errorf("listing the fscrypt protectors of %s: %w", ctx.Mount.Path, err)
	}
	for _, o := range options {
		if o.LoadError == nil && o.Name() == ProtectorName {
			return fsactions.GetProtectorFromOption(ctx, o)
		}
	}
	return nil, nil
}

// provision adds the unlocked policy's key to the filesystem's keyring; a
// key already there (another stage of the same mount) is fine.
func provision(policy *fsactions.Policy, dir string) error {
	if policy.IsProvisionedByTargetUser() {
		return nil
	}
	if err := policy.Provision(); err != nil {
		return fmt.Errorf("adding the fscrypt key of %s to the kernel: %w", dir, err)
	}
	return nil
}

// candidates are the key forms to try, the one new protectors get first:
// a raw key is the secret's first 32 bytes, zero-padded; a passphrase is
// the secret whole, then cut or padded to 32 bytes (older ceph-csi).
func candidates(src Source, secret []byte) [][]byte {
	padded := make([]byte, keyLen)
	copy(padded, secret)
	if src == RawKey || len(secret) == keyLen {
		return [][]byte{padded}
	}
	return [][]byte{append([]byte(nil), secret...), padded}
}

// keyFunc hands the library one key form per try, and ErrWrongKey once
// they are all refused (the library retries as long as it gets keys).
func keyFunc(keys [][]byte) fsactions.KeyFunc {
	next := 0
	return func(_ fsactions.ProtectorInfo, _ bool) (*fscrypto.Key, error) {
		if next >= len(keys) {
			return nil, ErrWrongKey
		}
		k, err := fscrypto.NewBlankKey(len(keys[next]))
		if err != nil {
			return nil, err
		}
		copy(k.Data(), keys[next])
		next++
		return k, nil
	}
}

// wipe clears an unlocked policy's or protector's key from memory; the
// kernel keeps its own copy.
func wipe(k interface{ Lock() error }) { _ = k.Lock() }

func unlockError(dir string, err error) error { return fmt.Errorf("unlocking %s: %w", dir, err) }

// effectiveUser is the process's user, without a passwd lookup (a
// container may have no entry for it): the fs keyring claims keys for its
// UID.
func effectiveUser() *user.User {
	uid := strconv.Itoa(os.Geteuid())
	return &user.User{Uid: uid, Gid: strconv.Itoa(os.Getegid()), Username: uid, HomeDir: "/"}
}
