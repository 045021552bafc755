package cephfs

import "testing"

func TestKernelQuotaSupported(t *testing.T) {
	for release, want := range map[string]bool{
		"6.18.44-fc-v1045":              true,
		"5.15.0-91-generic":             true,
		"4.17.0":                        true,
		"4.16.18-300.fc28.x86_64":       false,
		"4.14.336-257.562.amzn2.x86_64": false,
		"3.10.0-1062.el7.x86_64":        true,
		"3.10.0-1160.119.1.el7.x86_64":  true,
		"3.10.0-957.27.2.el7.x86_64":    false,
		"3.16.0-11-amd64":               false,
		"garbage":                       true,
	} {
		if got := kernelQuotaSupported(release); got != want {
			t.Errorf("%s: %v, want %v", release, got, want)
		}
	}
}
