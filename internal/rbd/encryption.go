package rbd

import (
	"errors"
	"fmt"
	"strings"

	"github.com/leanceph/cephcsi/internal/kms"
	"github.com/leanceph/cephcsi/internal/luks"
	"github.com/leanceph/cephcsi/internal/request"
)

// Encrypted volumes, laid out on the cluster as ceph-csi lays them out: a
// LUKS2 header at the start of the image, written by the node on the first
// stage; the image metadata key metaEncrypted says how far that got, and
// metaDEK holds the DEK (the LUKS passphrase) sealed by the volume's KMS.
// The journal entry records the KMS ID, the encryption type and the owner
// (the PVC namespace), which calls without StorageClass parameters
// (DeleteVolume, CreateSnapshot) need.
const (
	metaEncrypted    = "rbd.csi.ceph.com/encrypted"
	metaEncryptedOld = ".rbd.csi.ceph.com/encrypted"
	metaDEK          = "rbd.csi.ceph.com/dek"
	metaDEKOld       = ".rbd.csi.ceph.com/dek"

	// statePrepared: the DEK is stored, the image not yet formatted.
	statePrepared = "encryptionPrepared"
	// stateEncrypted: the image holds a LUKS header.
	stateEncrypted = "encrypted"

	encryptionTypeBlock = "block"
	encryptionTypeFile  = "file"
)

// encryption is what the encryption parameters ask for; nil when they ask
// for none.
type encryption struct {
	// KMSID is encryptionKMSID, "" for the default KMS.
	KMSID   string
	Options luks.Options
}

// encryptionParams are the parameters that only mean something with
// encrypted=true.
var encryptionParams = []string{"encryptionKMSID", "encryptionType", "encryptionCipher", "encryptionKeySize", "encryptionSectorSize"}

// parseEncryption reads encrypted, encryptionType, encryptionKMSID and the
// LUKS options from StorageClass parameters or a volume context; prefix
// is put before the parameter names in errors ("" or "volume_context.").
func parseEncryption(p map[string]string, prefix string) (*encryption, error) {
	bad := func(name, format string, args ...any) error { return request.ParamError(prefix, name, format, args...) }
	on, err := request.Encrypted(p, prefix, encryptionParams)
	if err != nil || !on {
		return nil, err
	}
	switch t := strings.TrimSpace(p["encryptionType"]); t {
	case "", encryptionTypeBlock:
	case encryptionTypeFile:
		return nil, bad("encryptionType", "%q (fscrypt on the volume's filesystem) is not supported for RBD by this driver; "+
			"use %q (LUKS2 on the image)", t, encryptionTypeBlock)
	default:
		return nil, bad("encryptionType", "%q is not %q or %q", t, encryptionTypeBlock, encryptionTypeFile)
	}
	e := &encryption{KMSID: kms.ParamID(p["encryptionKMSID"])}
	e.Options, err = luks.ParseOptions(p["encryptionCipher"], p["encryptionKeySize"], p["encryptionSectorSize"])
	var pe *luks.ParamError
	if errors.As(err, &pe) {
		return nil, bad(pe.Param, "%s", pe.Msg)
	}
	return e, err
}

// imageEncryption is the encryption metadata of an image: its state
// (metaEncrypted, "" when not encrypted) and its sealed DEK.
type imageEncryption struct {
	State, SealedDEK string
}

// encryptionKeys are the metadata keys readEncryption reads.
var encryptionKeys = []string{metaEncrypted, metaEncryptedOld, metaDEK, metaDEKOld}

// metadataSource is where readEncryption reads an image's metadata: an
// open image, or a content source.
type metadataSource interface {
	Name() string
	Metadata(key string) (string, error)
}

// readEncryption reads the encryption metadata of an image, taking the
// keys ceph-csi wrote before v3.4 (with a leading dot) when the current
// ones are missing.
func readEncryption(img metadataSource) (imageEncryption, error) {
	var e imageEncryption
	for _, k := range []struct {
		to       *string
		key, old string
	}{{&e.State, metaEncrypted, metaEncryptedOld}, {&e.SealedDEK, metaDEK, metaDEKOld}} {
		v, err := img.Metadata(k.key)
		if err == nil && v == "" {
			v, err = img.Metadata(k.old)
		}
		if err != nil {
			return e, fmt.Errorf("reading %s of image %s: %w", k.key, img.Name(), err)
		}
		*k.to = strings.TrimSpace(v)
	}
	return e, nil
}

// encryptionMetadata is the image metadata that records an encryption
// state and sealed DEK ("" for the default KMS, which stores none), and the
// keys it replaces.
func encryptionMetadata(state, sealed string) (set map[string]string, drop []string) {
	set = map[string]string{metaEncrypted: state}
	drop = []string{metaEncryptedOld, metaDEKOld}
	if sealed != "" {
		set[metaDEK] = sealed
	} else {
		drop = append(drop, metaDEK)
	}
	return set, drop
}
