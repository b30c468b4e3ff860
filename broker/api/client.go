package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
)

// maxResponse bounds what the client reads from the broker.
const maxResponse = 64 << 20

// Client talks to a broker over its unix socket.
type Client struct {
	hc *http.Client
}

// NewClient returns a client for the broker listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{hc: &http.Client{Transport: tr}}
}

// do sends a request and decodes a JSON answer into out, or returns the broker's error.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://broker"+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = string(b)
		}
		if resp.StatusCode == http.StatusNotImplemented {
			return fmt.Errorf("%w: %s", ErrNotImplemented, e.Error)
		}
		return &statusError{status: resp.StatusCode, body: b,
			msg: fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, e.Error)}
	}
	if s, ok := out.(*string); ok {
		*s = string(b)
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Status returns the broker's summary.
func (c *Client) Status(ctx context.Context) (s Status, err error) {
	return s, c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
}

// Jobs lists the jobs with VMs on the broker's host.
func (c *Client) Jobs(ctx context.Context) (j []Job, err error) {
	return j, c.do(ctx, http.MethodGet, "/v1/jobs", nil, &j)
}

// Regions lists the broker's region files.
func (c *Client) Regions(ctx context.Context) (r []Region, err error) {
	return r, c.do(ctx, http.MethodGet, "/v1/regions", nil, &r)
}

// VMs lists the running VMs.
func (c *Client) VMs(ctx context.Context) (v []VM, err error) {
	return v, c.do(ctx, http.MethodGet, "/v1/vms", nil, &v)
}

// Migrate asks the broker to migrate a VM and waits for the outcome. A migration that ran and
// failed returns its result (phases, failed step, rollback) with an error; a refused request
// returns an error only.
func (c *Client) Migrate(ctx context.Context, req MigrateRequest) (MigrateResult, error) {
	var res MigrateResult
	err := c.do(ctx, http.MethodPost, "/v1/migrate", req, &res)
	var se *statusError
	if errors.As(err, &se) && se.status == http.StatusInternalServerError {
		var failed MigrateResult
		if json.Unmarshal(se.body, &failed) == nil && failed.Error != "" {
			return failed, errors.New(failed.Error)
		}
	}
	return res, err
}

// statusError is a broker answer other than 200 (and 501, ErrNotImplemented), with its body
// for callers whose endpoint answers a failure with more than an error text.
type statusError struct {
	status int
	body   []byte
	msg    string
}

func (e *statusError) Error() string { return e.msg }

// Metrics returns the broker's metrics in the Prometheus text format.
func (c *Client) Metrics(ctx context.Context) (m string, err error) {
	return m, c.do(ctx, http.MethodGet, "/metrics", nil, &m)
}
