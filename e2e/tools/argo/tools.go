//go:build tools

// Package tools pins the commands this module builds: the controller, and the executor that
// runs in the step pods of the test bed's real nodes.
package tools

import (
	_ "github.com/argoproj/argo-workflows/v3/cmd/argoexec"
	_ "github.com/argoproj/argo-workflows/v3/cmd/workflow-controller"
)
