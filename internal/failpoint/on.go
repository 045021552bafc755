//go:build failpoints

package failpoint

import (
	"fmt"
	"os"
)

var armed = os.Getenv(EnvVar)

// Hit ends the process when name is the armed failpoint.
func Hit(name string) {
	if armed != "" && armed == name {
		fmt.Fprintf(os.Stderr, "failpoint %s: exiting\n", name)
		os.Exit(ExitCode)
	}
}

// Enabled reports whether failpoints are compiled in.
const Enabled = true
