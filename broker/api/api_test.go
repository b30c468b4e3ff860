package api_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"ivshim.dev/ivshim/broker/api"
)

type source struct{ snap api.Snapshot }

func (s source) Snapshot() api.Snapshot { return s.snap }
func (s source) WriteMetrics(w io.Writer) error {
	_, err := io.WriteString(w, "ivshim_broker_regions 1\n")
	return err
}

var snap = api.Snapshot{
	Status:  api.Status{Hypervisor: "netns", HostID: "01234567-89ab-cdef-0123-456789abcdef", Jobs: 1, Regions: 1, VMs: 2},
	Jobs:    []api.Job{{ID: "jobA", Region: "ivshim-jobA", VMs: []string{"a0", "a1"}}},
	Regions: []api.Region{{Job: "jobA", Path: "/dev/shm/ivshim-jobA", Size: 1 << 20, Usable: true, VMs: []api.RegionVM{{Index: 0, UUID: "u", State: "present"}}}},
	VMs:     []api.VM{{Name: "a0", Job: "jobA", Plugged: []string{"ivshim-jobA"}}, {Name: "x", Problem: "bad job id"}},
}

// serve starts a server on a fresh socket and returns the socket's path.
func serve(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "run", "broker.sock")
	l, err := api.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- api.Serve(ctx, l, api.Handler(source{snap}, zaptest.NewLogger(t))) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		if err := l.Close(); err != nil {
			t.Error(err)
		}
		if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left behind: %v", err)
		}
	})
	return sock
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestSocketMode(t *testing.T) {
	sock := serve(t)
	info, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Type() != os.ModeSocket || info.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", info.Mode())
	}
	entries, _ := os.ReadDir(filepath.Dir(sock))
	if len(entries) != 1 {
		t.Errorf("socket directory holds %d entries, want only the socket", len(entries))
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "broker.sock")
	// A killed broker leaves its socket file behind.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	l, err := api.Listen(sock)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	defer l.Close()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial the new socket: %v", err)
	}
	c.Close()
}

func TestClientReads(t *testing.T) {
	c := api.NewClient(serve(t))
	st, err := c.Status(ctx(t))
	if err != nil || st.HostID != snap.Status.HostID || st.VMs != 2 {
		t.Errorf("Status = %+v, %v", st, err)
	}
	jobs, err := c.Jobs(ctx(t))
	if err != nil || len(jobs) != 1 || jobs[0].VMs[1] != "a1" {
		t.Errorf("Jobs = %+v, %v", jobs, err)
	}
	regions, err := c.Regions(ctx(t))
	if err != nil || len(regions) != 1 || regions[0].VMs[0].State != "present" {
		t.Errorf("Regions = %+v, %v", regions, err)
	}
	vms, err := c.VMs(ctx(t))
	if err != nil || len(vms) != 2 || vms[1].Problem == "" {
		t.Errorf("VMs = %+v, %v", vms, err)
	}
	m, err := c.Metrics(ctx(t))
	if err != nil || m != "ivshim_broker_regions 1\n" {
		t.Errorf("Metrics = %q, %v", m, err)
	}
}

func TestMigrateNotImplemented(t *testing.T) {
	c := api.NewClient(serve(t))
	_, err := c.Migrate(ctx(t), api.MigrateRequest{VM: "a0", Destination: "host2"})
	if !errors.Is(err, api.ErrNotImplemented) || !strings.Contains(err.Error(), "not touched") {
		t.Errorf("Migrate = %v, want ErrNotImplemented", err)
	}
}

// migrator answers migrations as the broker does: by the VM's name.
type migrator struct{ source }

func (m migrator) Migrate(_ context.Context, req api.MigrateRequest) (api.MigrateResult, error) {
	res := api.MigrateResult{VM: req.VM, Destination: req.Destination, Phases: []api.Phase{{Name: "drain", Seconds: 0.5}}}
	switch req.VM {
	case "ok":
		res.Migrated = true
		return res, nil
	case "busy":
		return api.MigrateResult{}, fmt.Errorf("%w: VM busy is already migrating", api.ErrBusy)
	case "nosuch":
		return api.MigrateResult{}, fmt.Errorf("%w: no VM nosuch", api.ErrUnknownVM)
	case "baddest":
		return api.MigrateResult{}, fmt.Errorf("%w: nowhere", api.ErrBadDestination)
	case "cannot":
		return api.MigrateResult{}, fmt.Errorf("%w: no migration here", api.ErrNotImplemented)
	}
	res.FailedStep, res.Error, res.RolledBack = "drain", "migrate VM "+req.VM+": drain: 1 of its 1 ranks still use the region", true
	return res, errors.New(res.Error)
}

// TestMigrateAnswers: each outcome of a migration reaches the client with its status, and a
// migration that ran and failed still brings its phases and the failed step.
func TestMigrateAnswers(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "broker.sock")
	l, err := api.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- api.Serve(cctx, l, api.Handler(migrator{source{snap}}, zaptest.NewLogger(t))) }()
	defer func() { cancel(); <-done; l.Close() }()
	c := api.NewClient(sock)
	res, err := c.Migrate(ctx(t), api.MigrateRequest{VM: "ok", Destination: "h1", DeadlineMS: 500})
	if err != nil || !res.Migrated || len(res.Phases) != 1 || res.Phases[0].Seconds != 0.5 {
		t.Errorf("Migrate(ok) = %+v, %v", res, err)
	}
	res, err = c.Migrate(ctx(t), api.MigrateRequest{VM: "stuck", Destination: "h1"})
	if err == nil || res.FailedStep != "drain" || !res.RolledBack || len(res.Phases) != 1 || !strings.Contains(err.Error(), "still use the region") {
		t.Errorf("Migrate(stuck) = %+v, %v; want the failed migration's result and error", res, err)
	}
	for vm, status := range map[string]string{"busy": "409", "nosuch": "404", "baddest": "400", "cannot": "501"} {
		res, err := c.Migrate(ctx(t), api.MigrateRequest{VM: vm, Destination: "h1"})
		if err == nil || res.VM != "" || !strings.Contains(err.Error(), status) && !(vm == "cannot" && errors.Is(err, api.ErrNotImplemented)) {
			t.Errorf("Migrate(%s) = %+v, %v; want status %s", vm, res, err, status)
		}
	}
	for _, body := range []string{`{"vm":"ok","destination":"h1","deadline_ms":-1}`, `{"vm":"ok","destination":"h1","deadline_ms":3600001}`} {
		if status, out := raw(t, sock, "POST", "/v1/migrate", "application/json", body); status != 400 || !strings.Contains(out, "deadline_ms") {
			t.Errorf("%s: %d %s, want 400 naming deadline_ms", body, status, out)
		}
	}
}

// raw sends a request over the socket and returns status and body.
func raw(t *testing.T, sock, method, path, contentType, body string) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	req, err := http.NewRequestWithContext(ctx(t), method, "http://broker"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestBadRequests(t *testing.T) {
	sock := serve(t)
	const js = "application/json"
	for _, tc := range []struct {
		method, path, ctype, body string
		status                    int
		errorJSON                 bool
	}{
		{"POST", "/v1/migrate", js, `{"vm":"a0","destination":"h2"}`, 501, true},
		{"POST", "/v1/migrate", js, `{"vm":"a0"`, 400, true},
		{"POST", "/v1/migrate", js, `{"vm":"a0","destination":"h2","force":true}`, 400, true},
		{"POST", "/v1/migrate", js, `{"vm":"a0","destination":"h2"} {}`, 400, true},
		{"POST", "/v1/migrate", js, `{"vm":"","destination":"h2"}`, 400, true},
		{"POST", "/v1/migrate", js, `{"vm":"a\u0000","destination":"h2"}`, 400, true},
		{"POST", "/v1/migrate", js, `{"vm":"` + strings.Repeat("a", 300) + `","destination":"h2"}`, 400, true},
		{"POST", "/v1/migrate", js, `{"vm":"` + strings.Repeat("a", api.MaxBody) + `","destination":"h2"}`, 413, true},
		{"POST", "/v1/migrate", "text/plain", `{"vm":"a0","destination":"h2"}`, 415, true},
		{"POST", "/v1/migrate", js, `[1,2]`, 400, true},
		{"GET", "/v1/migrate", "", "", 405, false},
		{"DELETE", "/v1/status", "", "", 405, false},
		{"GET", "/v1/nothing", "", "", 404, false},
		{"GET", "/v1/status", "", "", 200, false},
	} {
		status, body := raw(t, sock, tc.method, tc.path, tc.ctype, tc.body)
		if status != tc.status {
			t.Errorf("%s %s %.40q: status %d, want %d (%s)", tc.method, tc.path, tc.body, status, tc.status, body)
		}
		if tc.errorJSON && !strings.HasPrefix(strings.TrimSpace(body), `{`) || tc.errorJSON && !strings.Contains(body, `"error"`) {
			t.Errorf("%s %s: body %q is not a JSON error", tc.method, tc.path, body)
		}
	}
}

func TestMetricsContentType(t *testing.T) {
	sock := serve(t)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://broker/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("metrics content type %q", ct)
	}
}

func TestClientWithoutBroker(t *testing.T) {
	c := api.NewClient(filepath.Join(t.TempDir(), "none.sock"))
	if _, err := c.Status(ctx(t)); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("Status without a broker: %v, want the missing socket reported", err)
	}
}
