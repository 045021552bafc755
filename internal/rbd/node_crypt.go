package rbd

import (
	"context"
	"errors"
	"fmt"

	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/journal"
	"github.com/leanceph/cephcsi/internal/kms"
	"github.com/leanceph/cephcsi/internal/luks"
	"github.com/leanceph/cephcsi/internal/volid"
)

// The node's part of encryption: after the image is mapped, open its LUKS
// header (formatting it first when the image is only prepared) at
// /dev/mapper/luks-rbd-<volume ID>, the name ceph-csi uses, and hand that
// device to mkfs, mount and publish. The DEK is read from the image
// metadata and opened by the volume's KMS; it lives only in a byte slice
// cleared before the call returns, and reaches cryptsetup as a sealed
// in-memory file.

// dataDevice is the device that holds the volume's data: the LUKS mapping
// of an encrypted volume, else the mapped image.
func (r *stageRecord) dataDevice() string {
	if r.Crypt != "" {
		return luks.MapperPath(r.Crypt)
	}
	return r.Device
}

// cryptVolume is what opening an encrypted volume needs besides the mapped
// device.
type cryptVolume struct {
	volumeID  string
	clusterID string
	pool      string
	namespace string
	image     string
	readOnly  bool
	creds     cephconn.Credentials
	secrets   map[string]string
	enc       *encryption
}

// openPool connects to the volume's pool with the node's credentials.
func (s *NodeServer) openPool(v *cryptVolume) (cluster, pool, error) {
	_, conn, err := s.Connect(v.clusterID, v.creds)
	if err != nil {
		return nil, nil, err
	}
	c := &radosCluster{conn: conn, namespace: v.namespace}
	p, err := c.OpenPool(v.pool, 0)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, p, nil
}

// volumeOwner is the owner (PVC namespace) the volume's journal entry
// records; "" for a static volume or an entry without one.
func (s *NodeServer) volumeOwner(p pool, volumeID string) (string, error) {
	id, err := volid.Decode(volumeID)
	if err != nil {
		return "", nil // a static volume: its ID is the image name
	}
	e, err := journal.Volumes(s.Options.InstanceID).Find(p.Journal(), id.UUID)
	if err != nil || e == nil {
		return "", err
	}
	return e.Owner, nil
}

// openEncrypted opens the LUKS header on dev (formatting a prepared image
// first) and returns the mapping name.
func (s *NodeServer) openEncrypted(ctx context.Context, v *cryptVolume, dev string) (string, error) {
	logger := klog.FromContext(ctx).WithValues("volume", v.volumeID, "device", dev)
	c, p, err := s.openPool(v)
	if err != nil {
		return "", fmt.Errorf("reading the encryption of image %s: %w", v.image, err)
	}
	defer c.Close()
	defer p.Close()
	img, err := p.OpenImage(v.image, true)
	if err != nil {
		return "", fmt.Errorf("opening image %s: %w", imageSpec(p, v.image), err)
	}
	have, err := readEncryption(img)
	var imageID string
	if err == nil {
		imageID, err = img.ID()
	}
	img.Close()
	if err != nil {
		return "", err
	}
	switch have.State {
	case stateEncrypted, statePrepared:
	case "":
		return "", csierr.Errorf(csierr.ErrPrecondition, "volume_context asks for encryption, and image %s has no %s metadata: "+
			"it was not provisioned encrypted", imageSpec(p, v.image), metaEncrypted)
	default:
		return "", csierr.Errorf(csierr.ErrPrecondition, "image %s has the unknown encryption state %s=%q", imageSpec(p, v.image), metaEncrypted, have.State)
	}
	owner, err := s.volumeOwner(p, v.volumeID)
	if err != nil {
		return "", err
	}
	k, err := kms.Get(ctx, v.enc.KMSID, s.KMSEnv(v.secrets, owner))
	if err != nil {
		return "", kms.CSIError(err, false)
	}
	dek, err := k.Open(ctx, v.volumeID, have.SealedDEK)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", imageSpec(p, v.image), kms.CSIError(err, false))
	}
	defer clear(dek)

	name := luks.MapperName(v.volumeID)
	active, backing, err := s.crypt.Status(ctx, name)
	if err != nil {
		return "", err
	}
	if active {
		if backing != dev {
			return "", csierr.Errorf(csierr.ErrPrecondition, "LUKS mapping %s is open on %s, not on %s, the device of image %s",
				name, backing, dev, imageSpec(p, v.image))
		}
		logger.V(2).Info("LUKS mapping already open", "mapping", name)
		return name, nil
	}
	if have.State == statePrepared {
		if err := s.formatPrepared(ctx, v, p, imageID, dev, dek, have.SealedDEK); err != nil {
			return "", err
		}
	}
	if err := s.crypt.Open(ctx, dev, name, dek, v.readOnly); err != nil {
		if errors.Is(err, luks.ErrWrongKey) {
			return "", csierr.Errorf(csierr.ErrPermission, "the DEK from KMS %q does not unlock the LUKS header of image %s: %w",
				k.ID(), imageSpec(p, v.image), err)
		}
		return "", err
	}
	logger.V(2).Info("LUKS mapping opened", "mapping", name, "kms", k.ID())
	if !v.readOnly {
		// A restore or clone larger than its source, or an image grown
		// while unstaged: the mapping takes the whole device.
		if err := s.crypt.Resize(ctx, name); err != nil {
			_ = s.crypt.Close(ctx, name)
			return "", err
		}
	}
	return name, nil
}

// formatPrepared writes the LUKS header of an image that has none yet, and
// records it. An image that already holds a header (a crash between the
// format and the record) is only recorded; one holding anything else is
// refused, never overwritten.
func (s *NodeServer) formatPrepared(ctx context.Context, v *cryptVolume, p pool, imageID, dev string, dek []byte, sealed string) error {
	existing, err := s.mounter.GetDiskFormat(dev)
	if err != nil {
		return fmt.Errorf("probing %s: %w", dev, err)
	}
	switch existing {
	case "":
		if v.readOnly {
			return csierr.Errorf(csierr.ErrPrecondition, "image %s is to be encrypted on its first stage, and is staged read-only", imageSpec(p, v.image))
		}
		if err := s.crypt.Format(ctx, dev, dek, v.enc.Options); err != nil {
			return err
		}
		klog.FromContext(ctx).V(2).Info("LUKS2 header written", "volume", v.volumeID, "device", dev)
	case "crypto_LUKS":
	default:
		return csierr.Errorf(csierr.ErrPrecondition, "image %s is to be encrypted, and holds %s already: it is not formatted over",
			imageSpec(p, v.image), existing)
	}
	// The sealed DEK is written again under its current key (it may have
	// been read from the pre-v3.4 one).
	set, drop := encryptionMetadata(stateEncrypted, sealed)
	if err := p.SetImageMetadata(imageID, set, drop); err != nil {
		return fmt.Errorf("recording that image %s is encrypted: %w", imageSpec(p, v.image), err)
	}
	return nil
}
