package cephfs

import (
	"context"
	"errors"
	"strings"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/fscrypt"
	"github.com/leanceph/cephcsi/internal/kms"
	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/service"
)

// Encrypted CephFS volumes, laid out as ceph-csi lays them out: fscrypt on
// the directory ceph-csi-encrypted at the subvolume's root (internal/fscrypt),
// which the node publishes instead of the root. The key is the KMS's secret
// (kms.FileSecret): the default KMS's encryptionPassphrase or the metadata
// KMS's passphrase; KMIP, which seals a key per volume, cannot serve. The
// journal entry records the KMS ID and the type "file", and the volume
// context carries encrypted and encryptionKMSID to the node.

// encryptionTypeFile is the only encryptionType of CephFS volumes.
const encryptionTypeFile = "file"

// encryption is what the encryption parameters ask for; nil when they ask
// for none.
type encryption struct {
	// KMSID is encryptionKMSID, "" for the default KMS.
	KMSID string
}

// luksParams only mean something for RBD's LUKS2.
var luksParams = []string{"encryptionCipher", "encryptionKeySize", "encryptionSectorSize", "encryptionPassphraseSize"}

// parseEncryption reads encrypted, encryptionType and encryptionKMSID from
// StorageClass parameters or a volume context; prefix is put before the
// names in errors ("" or "volume_context.").
func parseEncryption(p map[string]string, prefix string) (*encryption, error) {
	bad := func(name, format string, args ...any) error { return request.ParamError(prefix, name, format, args...) }
	if prefix == "" {
		for _, name := range luksParams {
			if strings.TrimSpace(p[name]) != "" {
				return nil, bad(name, "sets LUKS2 on RBD images; CephFS volumes are encrypted with fscrypt, whose ciphers are fixed "+
					"(AES-256-XTS contents, AES-256-CTS names)")
			}
		}
	}
	on, err := request.Encrypted(p, prefix, []string{"encryptionKMSID", "encryptionType"})
	if err != nil || !on {
		return nil, err
	}
	switch t := strings.TrimSpace(p["encryptionType"]); t {
	case "", encryptionTypeFile:
	case "block":
		return nil, bad("encryptionType", "%q (LUKS2) is for RBD volumes; CephFS volumes are encrypted with fscrypt (%q)", t, encryptionTypeFile)
	default:
		return nil, bad("encryptionType", "%q is not %q", t, encryptionTypeFile)
	}
	e := &encryption{KMSID: kms.ParamID(p["encryptionKMSID"])}
	return e, nil
}

// fileSecret builds the volume's KMS and returns its fscrypt secret and
// how it protects the key. The caller clears the secret.
func fileSecret(ctx context.Context, d *service.Deps, e *encryption, secrets map[string]string, owner string, atCreate bool) ([]byte, fscrypt.Source, error) {
	k, err := kms.Get(ctx, e.KMSID, d.KMSEnv(secrets, owner))
	if err != nil {
		return nil, 0, kms.CSIError(err, atCreate)
	}
	secret, raw, err := kms.FileSecret(k)
	if err != nil {
		return nil, 0, kms.CSIError(err, atCreate)
	}
	if raw {
		return secret, fscrypt.RawKey, nil
	}
	return secret, fscrypt.Passphrase, nil
}

// unlockError gives an fscrypt failure of a stage its kind.
func unlockError(err error) error {
	switch {
	case errors.Is(err, fscrypt.ErrWrongKey):
		return csierr.Errorf(csierr.ErrPermission, "%w", err)
	case errors.Is(err, fscrypt.ErrNotSupported), errors.Is(err, fscrypt.ErrLayout):
		return csierr.Errorf(csierr.ErrPrecondition, "%w", err)
	}
	return err
}
