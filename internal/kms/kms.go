// Package kms wraps and unwraps the data-encryption keys (DEKs) of
// encrypted volumes with the key management services users configure for
// ceph-csi, in ceph-csi's on-cluster formats, so that a volume either driver
// encrypted opens with the other.
//
// The configuration is ceph-csi's: a JSON object keyed by KMS ID (the
// StorageClass parameter encryptionKMSID), mounted from the ConfigMap
// ceph-csi-encryption-kms-config at DefaultConfigPath. Each section names
// its type in "encryptionKMSType" (or "KMS_PROVIDER"). The types served:
//
//   - default (no encryptionKMSID): the passphrase is the encryptionPassphrase
//     of the request's secrets, the same for every volume; nothing is stored.
//   - metadata (secrets-metadata): a random DEK per volume, sealed with a key
//     derived from a passphrase (AES-GCM under scrypt(passphrase, volume ID))
//     and stored in the image metadata. The passphrase is the request
//     secrets' encryptionPassphrase, or, with "secretName", that key of a
//     Kubernetes Secret in "secretNamespace" (default: the PVC's namespace).
//   - kmip: a random DEK per volume, sealed by a KMIP server (its Encrypt
//     operation, or locally under a key fetched from it) and stored in the
//     image metadata; the TLS credentials and the key's ID come from a
//     Kubernetes Secret in the driver's namespace.
//
// Other types ceph-csi knows (Vault, cloud KMSs) are refused by name.
//
// Key material is kept in byte slices that are cleared after use; it never
// appears in an error.
package kms

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// DefaultConfigPath is where Rook and ceph-csi's manifests mount the KMS
// configuration.
const DefaultConfigPath = "/etc/ceph-csi-encryption-kms-config/config.json"

// Types of KMS.
const (
	TypeDefault  = "default"
	TypeMetadata = "metadata"
	TypeKMIP     = "kmip"
)

// PassphraseKey is the key of the passphrase in request secrets and in the
// Kubernetes Secrets of the metadata KMS.
const PassphraseKey = "encryptionPassphrase"

// dekBytes is the entropy of a new DEK: 20 random bytes, used as the LUKS
// passphrase in their URL-safe base64 form, as ceph-csi does.
const dekBytes = 20

// ErrUnsupported marks a KMS type this driver does not serve.
var ErrUnsupported = errors.New("KMS type not supported")

// ErrConfig marks a KMS configuration that cannot be used (missing or
// malformed options, unknown KMS ID).
var ErrConfig = errors.New("bad KMS configuration")

// ErrWrongKey marks a sealed DEK the KMS's key does not open.
var ErrWrongKey = errors.New("the KMS key does not open the volume's sealed DEK")

// KMS seals and opens the DEKs of volumes. volumeID is the CSI ID of the
// volume (or snapshot) whose image holds the sealed DEK: the metadata KMS
// derives its key from it.
type KMS interface {
	// ID is the KMS ID (encryptionKMSID), "default" for the default KMS.
	ID() string
	// Type is one of the Type* constants.
	Type() string
	// Seal returns the sealed form of dek to store in the image metadata;
	// "" when the KMS keeps no per-volume DEK (the default KMS), whose
	// Open then returns its passphrase.
	Seal(ctx context.Context, volumeID string, dek []byte) (string, error)
	// Open returns the DEK from its sealed form. The caller clears it.
	Open(ctx context.Context, volumeID, sealed string) ([]byte, error)
	// Remove deletes what the KMS keeps for the volume. The KMS types
	// served keep the sealed DEK in the image metadata, which goes with
	// the image, so this is nothing for them.
	Remove(ctx context.Context, volumeID string) error
}

// NewDEK returns a fresh DEK: dekBytes random bytes in URL-safe base64.
// The caller clears it.
func NewDEK() ([]byte, error) {
	raw := make([]byte, dekBytes)
	defer clear(raw)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("reading random bytes for a DEK: %w", err)
	}
	dek := make([]byte, base64.URLEncoding.EncodedLen(len(raw)))
	base64.URLEncoding.Encode(dek, raw)
	return dek, nil
}

// defaultKMS uses the request's passphrase for every volume.
type defaultKMS struct {
	passphrase []byte
}

func (k *defaultKMS) ID() string   { return TypeDefault }
func (k *defaultKMS) Type() string { return TypeDefault }

func (k *defaultKMS) Seal(context.Context, string, []byte) (string, error) { return "", nil }

func (k *defaultKMS) Open(context.Context, string, string) ([]byte, error) {
	return append([]byte(nil), k.passphrase...), nil
}

func (k *defaultKMS) Remove(context.Context, string) error { return nil }

// ParamID is the KMS ID an encryptionKMSID parameter names: "" for the
// default KMS, whether unnamed or named "default".
func ParamID(param string) string {
	if id := strings.TrimSpace(param); id != TypeDefault {
		return id
	}
	return ""
}

// JournalID is a KMS ID as ceph-csi records it in the journal's
// csi.volume.encryptKMS: "default" for the default KMS.
func JournalID(id string) string {
	if id == "" {
		return TypeDefault
	}
	return id
}

// ErrNoSecret marks a KMS that cannot give its secret to fscrypt.
var ErrNoSecret = errors.New("the KMS cannot give fscrypt a secret")

// FileSecret returns the secret that protects CephFS volumes encrypted
// with fscrypt under k, as ceph-csi takes it: the default KMS's passphrase
// (a raw key) and the metadata KMS's (a passphrase to hash), the same for
// every volume of the KMS. raw says which. A KMS that only seals per-volume
// DEKs (KMIP) has none: ErrNoSecret. The caller clears the secret.
func FileSecret(k KMS) (secret []byte, raw bool, err error) {
	switch k := k.(type) {
	case *defaultKMS:
		return append([]byte(nil), k.passphrase...), true, nil
	case *metadataKMS:
		return append([]byte(nil), k.passphrase...), false, nil
	}
	return nil, false, fmt.Errorf("KMS %q is of type %q, which seals a key per volume and has no secret for fscrypt: %w",
		k.ID(), k.Type(), ErrNoSecret)
}

// CSIError gives a KMS failure its kind: a configuration the user must fix
// is InvalidArgument (at CreateVolume) or FailedPrecondition (later calls,
// whose request the user did not write); a wrong key is PermissionDenied;
// a KMS that cannot be reached is Unavailable.
func CSIError(err error, atCreate bool) error {
	switch {
	case errors.Is(err, ErrConfig), errors.Is(err, ErrUnsupported), errors.Is(err, ErrNoSecret):
		if atCreate {
			return csierr.Errorf(csierr.ErrInvalid, "parameter %q: %w", "encryptionKMSID", err)
		}
		return csierr.Errorf(csierr.ErrPrecondition, "%w", err)
	case errors.Is(err, ErrWrongKey):
		return csierr.Errorf(csierr.ErrPermission, "%w", err)
	default:
		return csierr.Errorf(csierr.ErrUnavailable, "%w", err)
	}
}
