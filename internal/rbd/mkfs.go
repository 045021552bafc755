package rbd

import (
	"strings"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// mkfsTakesValue lists, per filesystem, the short options of its mkfs that
// take a value (from mke2fs and mkfs.xfs's usage). mkfsOptions are checked
// against it so that no token of theirs can become an operand: mkfs would
// take a stray operand for the device, and format it.
var mkfsTakesValue = map[string]string{
	"ext4": "bCdeEgGiIJlLmMNoOrtTUz",
	"xfs":  "bdilLmnprs",
}

// mkfsFlags are the short options without a value each mkfs accepts.
var mkfsFlags = map[string]string{
	"ext4": "cDFjKnqSvV",
	"xfs":  "CfKNqV",
}

// parseMkfsOptions splits a mkfsOptions value into arguments, refusing any
// token that is not an option of that filesystem's mkfs or the value of
// one.
func parseMkfsOptions(fsType, v string) ([]string, error) {
	args := strings.Fields(v)
	takes, flags := mkfsTakesValue[fsType], mkfsFlags[fsType]
	for i := 0; i < len(args); i++ {
		a := args[i]
		if len(a) < 2 || a[0] != '-' || a[1] == '-' {
			return nil, csierr.Param("mkfsOptions", "%q is not an option of mkfs.%s (operands are not allowed)", a, fsType)
		}
		// A group of short flags, possibly ending with one that takes a
		// value, attached or as the next token.
		for j := 1; j < len(a); j++ {
			c := a[j]
			switch {
			case strings.IndexByte(flags, c) >= 0:
				continue
			case strings.IndexByte(takes, c) >= 0:
				if j == len(a)-1 {
					if i+1 >= len(args) {
						return nil, csierr.Param("mkfsOptions", "option -%c of mkfs.%s needs a value", c, fsType)
					}
					i++
				}
				j = len(a)
			default:
				return nil, csierr.Param("mkfsOptions", "-%c is not an option of mkfs.%s", c, fsType)
			}
		}
	}
	return args, nil
}
