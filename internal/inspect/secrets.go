package inspect

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// secretKeys are the fields of the provisioner Secrets that inspect reads.
var secretKeys = []string{"userID", "userKey", "adminID", "adminKey"}

// ReadSecrets reads the provisioner credentials from path, which is one of:
// a directory holding one file per key (a Kubernetes Secret mounted as a
// volume: userID, userKey, adminID, adminKey); a JSON object of those keys
// (the Secret's stringData); or KEY=VALUE lines. The key never comes from
// the command line or the environment, and is never printed.
func ReadSecrets(path string) (map[string]string, error) {
	if path == "" {
		return nil, csierr.Errorf(csierr.ErrInvalid, "--secrets is required: a Secret mounted as a directory, or a file of userID/userKey (adminID/adminKey for CephFS)")
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrInvalid, "--secrets: %v", err)
	}
	out := map[string]string{}
	if st.IsDir() {
		for _, k := range secretKeys {
			data, err := os.ReadFile(filepath.Join(path, k))
			if os.IsNotExist(err) {
				continue
			}
			if err != nil {
				return nil, csierr.Errorf(csierr.ErrInvalid, "--secrets: %v", err)
			}
			out[k] = strings.TrimSpace(string(data))
		}
		return out, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrInvalid, "--secrets: %v", err)
	}
	if t := bytes.TrimSpace(data); len(t) > 0 && t[0] == '{' {
		if err := json.Unmarshal(t, &out); err != nil {
			// The parser's message may quote the file: keep it out.
			return nil, csierr.Errorf(csierr.ErrInvalid, "--secrets %s: not a JSON object of strings", path)
		}
		return out, nil
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		// The line is never quoted back: it may be a key.
		if !ok || !slices.Contains(secretKeys, k) {
			return nil, csierr.Errorf(csierr.ErrInvalid, "--secrets %s: line %d is not KEY=VALUE with a key of %s", path, n, strings.Join(secretKeys, ", "))
		}
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}

// secretFlagHint is the usage text of --secrets.
var secretFlagHint = fmt.Sprintf("provisioner credentials: a Secret mounted as a directory (files %s), "+
	"or a file of KEY=VALUE lines or a JSON object of those keys; never a key on the command line", strings.Join(secretKeys, ", "))
