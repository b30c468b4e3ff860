// Package brokertest runs a broker in the background of a test, as net/http/httptest does for
// servers.
package brokertest

import (
	"context"
	"testing"
	"time"

	"ivshim.dev/ivshim/broker"
)

// Start runs b until the test ends or timeout passes, whichever is first, and fails the test
// if Run returns an error. The returned context ends with the run's deadline, for the test's
// own waits.
func Start(t testing.TB, b *broker.Broker, timeout time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("broker Run: %v", err)
		}
	})
	return ctx
}
