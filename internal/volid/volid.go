// Package volid encodes and decodes the CSI volume and snapshot IDs shared with
// ceph-csi:
//
//	VVVV-LLLL-<clusterID>-PPPPPPPPPPPPPPPP-<uuid>
//
// VVVV is the encoding version, LLLL the clusterID's length (both 4 hex
// digits), P the 16-hex-digit pool ID (RBD) or filesystem ID (CephFS), and
// uuid the 36-character object UUID. The clusterID may itself contain dashes;
// its length field says where it ends.
package volid

import (
	"errors"
	"fmt"
	"strconv"
)

const (
	// Version is the only encoding version in use.
	Version = 1
	// MaxLength is the longest ID the CSI spec lets us hand out.
	MaxLength = 128
	// MaxClusterIDLength is the longest clusterID config.json may hold.
	MaxClusterIDLength = 36

	uuidLength = 36
)

// ErrMalformed marks a string that is not an ID of ours.
var ErrMalformed = errors.New("malformed volume or snapshot ID")

// ID is a decoded volume or snapshot ID.
type ID struct {
	ClusterID string
	// LocationID is the pool ID for RBD, the filesystem ID for CephFS.
	LocationID int64
	UUID       string
}

// Encode returns the string form of id.
func (id ID) Encode() (string, error) {
	if id.ClusterID == "" || len(id.ClusterID) > MaxClusterIDLength {
		return "", fmt.Errorf("clusterID %q must be 1 to %d bytes", id.ClusterID, MaxClusterIDLength)
	}
	if len(id.UUID) != uuidLength {
		return "", fmt.Errorf("uuid %q is not %d characters long", id.UUID, uuidLength)
	}
	if id.LocationID < 0 {
		return "", fmt.Errorf("negative pool or filesystem ID %d", id.LocationID)
	}
	s := fmt.Sprintf("%04x-%04x-%s-%016x-%s", Version, len(id.ClusterID), id.ClusterID, id.LocationID, id.UUID)
	if len(s) > MaxLength {
		return "", fmt.Errorf("ID %q is longer than %d bytes", s, MaxLength)
	}
	return s, nil
}

// Decode parses s. Any deviation from the format is ErrMalformed.
func Decode(s string) (ID, error) {
	var id ID
	// version(4) - length(4) - clusterID - pool(16) - uuid(36)
	const fixed = 4 + 1 + 4 + 1 + 1 + 16 + 1 + uuidLength
	if len(s) > MaxLength || len(s) < fixed+1 {
		return id, fmt.Errorf("%w: %q has the wrong length", ErrMalformed, s)
	}
	version, err := strconv.ParseUint(s[0:4], 16, 16)
	if err != nil || s[4] != '-' {
		return id, fmt.Errorf("%w: %q has no version field", ErrMalformed, s)
	}
	if version != Version {
		return id, fmt.Errorf("%w: %q has unknown encoding version %d", ErrMalformed, s, version)
	}
	clusterLen, err := strconv.ParseUint(s[5:9], 16, 16)
	if err != nil || s[9] != '-' {
		return id, fmt.Errorf("%w: %q has no clusterID length field", ErrMalformed, s)
	}
	if clusterLen == 0 || clusterLen > MaxClusterIDLength || len(s) != fixed+int(clusterLen) {
		return id, fmt.Errorf("%w: %q does not match its clusterID length %d", ErrMalformed, s, clusterLen)
	}
	rest := s[10:]
	id.ClusterID = rest[:clusterLen]
	rest = rest[clusterLen:]
	if rest[0] != '-' || rest[17] != '-' {
		return ID{}, fmt.Errorf("%w: %q has misplaced separators", ErrMalformed, s)
	}
	loc, err := strconv.ParseUint(rest[1:17], 16, 63)
	if err != nil {
		return ID{}, fmt.Errorf("%w: %q has a bad pool field", ErrMalformed, s)
	}
	id.LocationID = int64(loc)
	id.UUID = rest[18:]
	if !validUUID(id.UUID) {
		return ID{}, fmt.Errorf("%w: %q has a bad uuid", ErrMalformed, s)
	}
	return id, nil
}

func validUUID(u string) bool {
	if len(u) != uuidLength {
		return false
	}
	for i, c := range u {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') && (c < 'A' || c > 'F') {
				return false
			}
		}
	}
	return true
}
