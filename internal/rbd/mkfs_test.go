package rbd

import (
	"reflect"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/csierr"
)

func TestMkfsOptionsAcceptOptionsOnly(t *testing.T) {
	for _, tc := range []struct {
		fs, v string
		want  []string
	}{
		{"ext4", "-E nodiscard,lazy_itable_init=1 -m0", []string{"-E", "nodiscard,lazy_itable_init=1", "-m0"}},
		{"ext4", "-F -b 4096 -L data", []string{"-F", "-b", "4096", "-L", "data"}},
		{"ext4", "-qFb4096", []string{"-qFb4096"}},
		{"xfs", "-K -m reflink=1 -i size=512", []string{"-K", "-m", "reflink=1", "-i", "size=512"}},
		{"xfs", "", nil},
	} {
		got, err := parseMkfsOptions(tc.fs, tc.v)
		if err != nil || !reflect.DeepEqual(got, tc.want) && len(tc.want) > 0 {
			t.Errorf("parseMkfsOptions(%s, %q) = %q, %v; want %q", tc.fs, tc.v, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ fs, v string }{
		{"ext4", "-E nodiscard /dev/sda"}, // an operand: mkfs would format it
		{"ext4", "/dev/sda"},
		{"ext4", "-b"},               // a value is missing
		{"ext4", "--version"},        // long options are not expected
		{"ext4", "-Z"},               // not an option of mke2fs
		{"xfs", "-f /dev/sdb"},       // an operand
		{"xfs", "-E nodiscard"},      // an ext4 option given to xfs
		{"ext4", "-F 1000"},          // -F takes no value: 1000 is an operand
		{"ext4", "-L data blocks"},   // the second word is an operand
		{"xfs", "-K -d agcount=4 x"}, // x is an operand
	} {
		if _, err := parseMkfsOptions(tc.fs, tc.v); csierr.Code(err) != codes.InvalidArgument {
			t.Errorf("parseMkfsOptions(%s, %q) = %v, want InvalidArgument", tc.fs, tc.v, err)
		}
	}
}
