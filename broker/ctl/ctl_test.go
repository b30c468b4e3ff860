package ctl_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ivshim.dev/ivshim/broker/ctl"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	code := ctl.Run(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"frobnicate"}, {"migrate", "vm"}, {"status", "extra"}, {"-nosuchflag", "status"}} {
		if code, _, stderr := run(t, args...); code != 2 || !strings.Contains(stderr, "usage") {
			t.Errorf("ivshimctl %q: exit %d, stderr %q; want 2 and the usage", args, code, stderr)
		}
	}
}

func TestNoBroker(t *testing.T) {
	code, _, stderr := run(t, "-socket", filepath.Join(t.TempDir(), "none.sock"), "status")
	if code != 1 || !strings.Contains(stderr, "ivshimctl: GET /v1/status") {
		t.Errorf("exit %d, stderr %q; want 1 and the failed request", code, stderr)
	}
}
