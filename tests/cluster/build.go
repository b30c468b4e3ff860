package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// Compiler returns the mpicc wrapper of m: mpicc.openmpi or mpicc.mpich.
func (m MPI) Compiler() string { return "mpicc." + m.String() }

// Build compiles the C MPI program src (e.g. tests/bench/ivbench.c) for library m into
// dir/<name>-<m> (e.g. dir/ivbench-mpich) and returns its path.
func Build(ctx context.Context, m MPI, src, dir string) (string, error) {
	out := filepath.Join(dir, strings.TrimSuffix(filepath.Base(src), ".c")+"-"+m.String())
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, m.Compiler(), "-O2", "-Wall", "-o", out, src)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build %s with %s: %w: %s", src, m.Compiler(), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
