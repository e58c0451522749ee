//go:build tools

// Package tools pins the commands this module builds: Argo 4's controller and its executor.
package tools

import (
	_ "github.com/argoproj/argo-workflows/v4/cmd/argoexec"
	_ "github.com/argoproj/argo-workflows/v4/cmd/workflow-controller"
)
