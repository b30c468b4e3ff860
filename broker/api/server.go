package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"go.uber.org/zap"
)

// MaxBody bounds request bodies.
const MaxBody = 64 << 10

// maxField bounds a request's string fields (VM and host names).
const maxField = 256

// Handler serves the API from src.
func Handler(src Source, log *zap.Logger) http.Handler {
	mux := http.NewServeMux()
	get := func(path string, part func(Snapshot) any) {
		mux.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, log, http.StatusOK, part(src.Snapshot()))
		})
	}
	get("/v1/status", func(s Snapshot) any { return s.Status })
	get("/v1/jobs", func(s Snapshot) any { return nonNil(s.Jobs) })
	get("/v1/regions", func(s Snapshot) any { return nonNil(s.Regions) })
	get("/v1/vms", func(s Snapshot) any { return nonNil(s.VMs) })
	mux.HandleFunc("POST /v1/migrate", func(w http.ResponseWriter, r *http.Request) {
		var req MigrateRequest
		if status, err := decode(w, r, &req); err != nil {
			writeError(w, log, status, err)
			return
		}
		if err := req.validate(); err != nil {
			writeError(w, log, http.StatusBadRequest, err)
			return
		}
		m, ok := src.(Migrator)
		if !ok {
			writeError(w, log, http.StatusNotImplemented, errors.New("this broker cannot migrate VMs; the VM was not touched"))
			return
		}
		// A migration outlives the server's write timeout: drain and attach each take up to
		// the deadline, and the hypervisor's move more. It also outlives a client that gives
		// up: stopping halfway would leave the VM neither here nor there.
		http.NewResponseController(w).SetWriteDeadline(time.Time{})
		res, err := m.Migrate(context.WithoutCancel(r.Context()), req)
		switch {
		case err == nil:
			writeJSON(w, log, http.StatusOK, res)
		case errors.Is(err, ErrNotImplemented):
			writeError(w, log, http.StatusNotImplemented, err)
		case errors.Is(err, ErrBadDestination):
			writeError(w, log, http.StatusBadRequest, err)
		case errors.Is(err, ErrUnknownVM):
			writeError(w, log, http.StatusNotFound, err)
		case errors.Is(err, ErrBusy):
			writeError(w, log, http.StatusConflict, err)
		default:
			writeJSON(w, log, http.StatusInternalServerError, res)
		}
	})
	mux.Handle("GET /metrics", MetricsHandler(src, log))
	return mux
}

// MetricsHandler serves src's metrics in the Prometheus text format.
func MetricsHandler(src Source, log *zap.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b bytes.Buffer
		if err := src.WriteMetrics(&b); err != nil {
			writeError(w, log, http.StatusInternalServerError, err)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		w.Write(b.Bytes())
	})
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// decode reads one JSON value into v strictly and returns the status to answer on error.
func decode(w http.ResponseWriter, r *http.Request, v any) (int, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return http.StatusUnsupportedMediaType, fmt.Errorf("content type %q: want application/json", ct)
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return http.StatusRequestEntityTooLarge, fmt.Errorf("request body over %d bytes", MaxBody)
		}
		return http.StatusBadRequest, fmt.Errorf("bad request body: %w", err)
	}
	if dec.More() {
		return http.StatusBadRequest, errors.New("bad request body: data after the JSON value")
	}
	return 0, nil
}

func (m MigrateRequest) validate() error {
	if m.DeadlineMS < 0 || m.DeadlineMS > MaxDeadlineMS {
		return fmt.Errorf("deadline_ms %d: want 0 (the broker's default) .. %d", m.DeadlineMS, MaxDeadlineMS)
	}
	for _, f := range []struct{ name, v string }{{"vm", m.VM}, {"destination", m.Destination}} {
		if f.v == "" || len(f.v) > maxField {
			return fmt.Errorf("%s: want 1..%d bytes, got %d", f.name, maxField, len(f.v))
		}
		if strings.IndexFunc(f.v, func(r rune) bool { return !unicode.IsPrint(r) || r == unicode.ReplacementChar }) >= 0 {
			return fmt.Errorf("%s %q: has non-printable characters", f.name, f.v)
		}
	}
	return nil
}

func writeJSON(w http.ResponseWriter, log *zap.Logger, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		log.Error("encode API response", zap.Error(err))
		status, b = http.StatusInternalServerError, []byte(`{"error":"encode response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, log *zap.Logger, status int, err error) {
	writeJSON(w, log, status, errorBody{Error: err.Error()})
}

// Listener is the API's unix socket.
type Listener struct {
	net.Listener
	path string
	info os.FileInfo // the socket file as created, so Close removes only our own
}

// Listen creates the unix socket at path with mode 0600, replacing a stale one (left by a
// killed broker) atomically: the socket is bound under a temporary name, restricted, then
// renamed into place, so it is never reachable with a wider mode. The directory is created
// with mode 0750 if missing.
func Listen(path string) (*Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.tmp-%d", filepath.Base(path), os.Getpid()))
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	fail := func(err error) (*Listener, error) {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	info, err := os.Lstat(tmp)
	if err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return &Listener{Listener: l, path: path, info: info}, nil
}

// Close stops listening and removes the socket file unless another process replaced it. It
// may be called more than once (http.Server.Shutdown closes its listener too).
func (l *Listener) Close() error {
	err := l.Listener.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	if cur, serr := os.Lstat(l.path); serr == nil && os.SameFile(cur, l.info) {
		if rerr := os.Remove(l.path); rerr != nil && err == nil {
			err = rerr
		}
	}
	if err != nil {
		return fmt.Errorf("close api socket %s: %w", l.path, err)
	}
	return nil
}

// Serve serves h on l until ctx ends, then shuts down gracefully for up to a second.
func Serve(ctx context.Context, l net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case err := <-done:
		return fmt.Errorf("api server: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("api server shutdown: %w", err)
	}
	return nil
}
