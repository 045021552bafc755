package rbd

import (
	"context"
	"fmt"

	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/journal"
	"github.com/leanceph/cephcsi/internal/kms"
)

// The controller's part of encryption: a new volume gets a fresh DEK,
// sealed by its KMS, and the state "encryptionPrepared" (the node formats
// it on first stage); a restore, a PVC clone and a snapshot get the DEK of
// their source, sealed anew for their own ID (the metadata KMS derives
// its key from it), and the source's state. The LUKS header itself comes
// with the cloned data.

// volumeKMS builds the KMS of kmsID for a volume owned by owner.
func (s *ControllerServer) volumeKMS(ctx context.Context, kmsID string, secrets map[string]string, owner string, atCreate bool) (kms.KMS, error) {
	k, err := kms.Get(ctx, kmsID, s.KMSEnv(secrets, owner))
	if err != nil {
		return nil, kms.CSIError(err, atCreate)
	}
	return k, nil
}

// checkSourceEncryption refuses a content source whose encryption differs
// from the new volume's: a plain image flagged encrypted would be
// formatted over on its first stage, and an encrypted one staged plain
// would show only its LUKS header.
func checkSourceEncryption(src *contentSource, e *encryption) error {
	if src == nil {
		return nil
	}
	have, err := readEncryption(src)
	if err != nil {
		return err
	}
	switch {
	case have.State != "" && e == nil:
		return csierr.Errorf(csierr.ErrInvalid, "volume_content_source %s is encrypted; the StorageClass must set encrypted: \"true\" too", src.id)
	case have.State == "" && e != nil:
		return csierr.Errorf(csierr.ErrInvalid, "volume_content_source %s is not encrypted, and this StorageClass asks for encryption: "+
			"its data would be formatted over", src.id)
	}
	return nil
}

// setupEncryption records the DEK and state of an encrypted volume on its
// image (entry.ImageID): a fresh DEK for an empty volume, the source's
// for a clone. A retry finds an empty volume's DEK already there and
// keeps it: a new one would lose what the node may have formatted.
func (s *ControllerServer) setupEncryption(ctx context.Context, t *target, entry *journal.Entry, k kms.KMS, src *contentSource,
	volumeID string, secrets map[string]string) error {
	if k == nil {
		return nil
	}
	var dek []byte
	var err error
	state := statePrepared
	if src == nil {
		img, err := t.p.OpenImage(entry.ImageName, true)
		if err != nil {
			return fmt.Errorf("opening %s: %w", imageSpec(t.p, entry.ImageName), err)
		}
		have, err := readEncryption(img)
		img.Close()
		if err != nil {
			return err
		}
		if have.State != "" {
			return nil
		}
		if dek, err = kms.NewDEK(); err != nil {
			return err
		}
	} else {
		if dek, state, err = s.sourceDEK(ctx, src, k, secrets); err != nil {
			return err
		}
	}
	defer clear(dek)
	return sealOnImage(ctx, t.p, entry, k, volumeID, dek, state)
}

// sourceDEK opens the DEK of an encrypted content source with the KMS its
// journal entry names (fallback: the new volume's, for entries that
// predate ceph-csi recording it) and returns it with the source's state.
func (s *ControllerServer) sourceDEK(ctx context.Context, src *contentSource, fallback kms.KMS, secrets map[string]string) ([]byte, string, error) {
	have, err := readEncryption(src)
	if err != nil {
		return nil, "", err
	}
	k := fallback
	if src.entry != nil && src.entry.KMSID != "" && src.entry.KMSID != fallback.ID() {
		if k, err = s.volumeKMS(ctx, src.entry.KMSID, secrets, src.entry.Owner, false); err != nil {
			return nil, "", fmt.Errorf("the KMS of the source %s: %w", src.id, err)
		}
	}
	dek, err := k.Open(ctx, src.id, have.SealedDEK)
	if err != nil {
		return nil, "", fmt.Errorf("opening the DEK of the source %s: %w", src.id, kms.CSIError(err, false))
	}
	return dek, have.State, nil
}

// sealOnImage seals dek for volumeID and writes it, with state, on the
// image of entry, in one write.
func sealOnImage(ctx context.Context, p pool, entry *journal.Entry, k kms.KMS, volumeID string, dek []byte, state string) error {
	sealed, err := k.Seal(ctx, volumeID, dek)
	if err != nil {
		return fmt.Errorf("sealing the DEK of %s: %w", volumeID, kms.CSIError(err, false))
	}
	set, drop := encryptionMetadata(state, sealed)
	if err := p.SetImageMetadata(entry.ImageID, set, drop); err != nil {
		return fmt.Errorf("recording the encryption of %s: %w", imageSpec(p, entry.ImageName), err)
	}
	klog.FromContext(ctx).V(2).Info("encryption recorded", "image", entry.ImageName, "kms", k.ID(), "state", state)
	return nil
}

// sealSnapshot gives a snapshot of an encrypted volume the volume's DEK,
// sealed for the snapshot's ID by the volume's KMS, and its state.
func (s *ControllerServer) sealSnapshot(ctx context.Context, ref *volumeRef, entry *journal.Entry, snapshotID string, secrets map[string]string) error {
	src, err := ref.p.OpenImage(ref.image(), true)
	if err != nil {
		return notFoundVolume(volumeIDString(ref), err)
	}
	have, err := readEncryption(src)
	src.Close()
	if err != nil || have.State == "" {
		return err
	}
	k, err := s.volumeKMS(ctx, ref.entry.KMSID, secrets, ref.entry.Owner, false)
	if err != nil {
		return fmt.Errorf("the KMS of volume %s: %w", volumeIDString(ref), err)
	}
	dek, err := k.Open(ctx, volumeIDString(ref), have.SealedDEK)
	if err != nil {
		return fmt.Errorf("opening the DEK of volume %s: %w", volumeIDString(ref), kms.CSIError(err, false))
	}
	defer clear(dek)
	return sealOnImage(ctx, ref.p, entry, k, snapshotID, dek, have.State)
}

// imageEncrypted reports whether an open image is encrypted.
func imageEncrypted(img image) (bool, error) {
	e, err := readEncryption(img)
	return e.State != "", err
}
