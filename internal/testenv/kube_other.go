//go:build !linux

package testenv

import "os/exec"

// dieWithParent does nothing here: only Linux has a parent-death signal.
// The servers are still stopped by the test's cleanup.
func dieWithParent(*exec.Cmd) {}
