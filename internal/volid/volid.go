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
	"math"
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
	if !validUUID(id.UUID) {
		return "", fmt.Errorf("uuid %q is not a UUID in lowercase canonical form", id.UUID)
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

// Decode parses s. Any deviation from the format is ErrMalformed, and so is
// any spelling Encode does not produce (uppercase hex digits in a field or
// the uuid): one ID has one string, so two spellings can never name two
// volumes, take two locks or miss each other in the journal.
func Decode(s string) (ID, error) {
	var id ID
	// version(4) - length(4) - clusterID - pool(16) - uuid(36)
	const fixed = 4 + 1 + 4 + 1 + 1 + 16 + 1 + uuidLength
	if len(s) > MaxLength || len(s) < fixed+1 {
		return id, fmt.Errorf("%w: %q has the wrong length", ErrMalformed, s)
	}
	version, ok := hexField(s[0:4])
	if !ok || s[4] != '-' {
		return id, fmt.Errorf("%w: %q has no version field", ErrMalformed, s)
	}
	if version != Version {
		return id, fmt.Errorf("%w: %q has unknown encoding version %d", ErrMalformed, s, version)
	}
	clusterLen, ok := hexField(s[5:9])
	if !ok || s[9] != '-' {
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
	loc, ok := hexField(rest[1:17])
	if !ok || loc > math.MaxInt64 {
		return ID{}, fmt.Errorf("%w: %q has a bad pool field", ErrMalformed, s)
	}
	id.LocationID = int64(loc)
	id.UUID = rest[18:]
	if !validUUID(id.UUID) {
		return ID{}, fmt.Errorf("%w: %q has a bad uuid", ErrMalformed, s)
	}
	return id, nil
}

// hexField parses a fixed-width field of lowercase hex digits, the only
// digits Encode writes.
func hexField(f string) (uint64, bool) {
	var v uint64
	for i := 0; i < len(f); i++ {
		c := f[i]
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | uint64(c-'0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, len(f) > 0 && len(f) <= 16
}

// validUUID reports whether u is a UUID in its canonical form: 36
// characters, lowercase hex digits and dashes at 8, 13, 18 and 23.
func validUUID(u string) bool {
	if len(u) != uuidLength {
		return false
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
		}
	}
	return true
}
