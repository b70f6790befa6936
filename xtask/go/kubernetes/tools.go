//go:build tools

// Package tools pins the Kubernetes commands the testbed builds, so `go mod tidy` keeps their
// dependencies in go.mod/go.sum. Built by `cargo xtask deps install` (xtask/src/deps/kube.rs).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
