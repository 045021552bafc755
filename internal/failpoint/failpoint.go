// Package failpoint marks the points between the steps of a multi-step
// call where a crash must leave something a retry can finish. Built with
// the tag "failpoints", Hit ends the process at the point named by the
// environment variable CEPHCSI_FAILPOINT, so that a test can kill the real
// binary there and check that the retried call converges; without the tag
// Hit does nothing and costs nothing.
package failpoint

// EnvVar names the failpoint to die at.
const EnvVar = "CEPHCSI_FAILPOINT"

// ExitCode is the status the process exits with at an armed failpoint.
const ExitCode = 77
