package request

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// ParamError is InvalidArgument naming a parameter of StorageClass
// parameters (prefix "") or of a volume context (prefix
// "volume_context.").
func ParamError(prefix, name, format string, args ...any) error {
	if prefix == "" {
		return csierr.Param(name, format, args...)
	}
	return csierr.Errorf(csierr.ErrInvalid, "%s%s: %s", prefix, name, fmt.Sprintf(format, args...))
}

// Encrypted reads the encrypted parameter of StorageClass parameters or a
// volume context (prefix as for ParamError). A StorageClass setting one of
// dependents (the encryption parameters) without encrypted is refused: it
// would get plain volumes its author believes encrypted. A volume context
// is what an older driver wrote: taken as it is.
func Encrypted(p map[string]string, prefix string, dependents []string) (bool, error) {
	v := strings.TrimSpace(p["encrypted"])
	if v == "" {
		if prefix == "" {
			for _, name := range dependents {
				if strings.TrimSpace(p[name]) != "" {
					return false, ParamError(prefix, name, "is set but encrypted is not: set encrypted to \"true\" for encrypted "+
						"volumes (or \"false\" for plain ones)")
				}
			}
		}
		return false, nil
	}
	on, err := strconv.ParseBool(v)
	if err != nil {
		return false, ParamError(prefix, "encrypted", "%q is not true or false", p["encrypted"])
	}
	return on, nil
}
