package shim

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"ivshim.dev/ivshim/ivshmem"
)

// TestWatcherLogsLeaving: the watcher logs a warning once each time the broker flags the
// rank's VM leaving, and not for another VM's flag.
func TestWatcherLogsLeaving(t *testing.T) {
	r := openRegion(t, newRegion(t, nil))
	own, other := [16]byte{1}, [16]byte{2}
	for i, u := range [][16]byte{own, other} {
		if err := r.SetVM(uint32(i), u, ivshmem.VMPresent); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.ClaimSession(9); err != nil {
		t.Fatal(err)
	}
	slot, err := r.ClaimSlot(ivshmem.SlotIdentity{Session: 9, VMIndex: 0})
	if err != nil {
		t.Fatal(err)
	}
	said := make(chan string, 8)
	w := startWatcher(r, slot, 0, zap.New(warnings{said}))
	defer w.Stop()
	// A notice must come within 50 beats; silence is judged after 5 (a late, wrong notice is
	// still caught: by the next expected one's count at the end).
	expect := func(what string, want bool) {
		t.Helper()
		wait := 5 * beatInterval
		if want {
			wait = 50 * beatInterval
		}
		select {
		case s := <-said:
			if !want || !strings.Contains(s, "flagged leaving") {
				t.Fatalf("%s: watcher said %q", what, s)
			}
		case <-time.After(wait):
			if want {
				t.Fatalf("%s: the watcher said nothing", what)
			}
		}
	}
	set := func(i uint32, u [16]byte, st ivshmem.VMState) {
		if err := r.SetVM(i, u, st); err != nil {
			t.Fatal(err)
		}
	}
	set(1, other, ivshmem.VMLeaving)
	expect("another VM leaving", false)
	set(0, own, ivshmem.VMLeaving)
	expect("own VM leaving", true)
	set(1, other, ivshmem.VMPresent) // a change elsewhere while still flagged: no repeat
	expect("still leaving", false)
	set(0, own, ivshmem.VMPresent)
	expect("rolled back", false)
	set(0, own, ivshmem.VMLeaving)
	expect("flagged again", true)
	expect("nothing more", false)
	if n := len(said); n != 0 {
		t.Errorf("%d more notices", n)
	}
}

// warnings is a zap core that passes the messages of warnings and worse to a channel.
type warnings struct{ c chan<- string }

func (w warnings) Enabled(l zapcore.Level) bool      { return l >= zapcore.WarnLevel }
func (w warnings) With([]zapcore.Field) zapcore.Core { return w }
func (w warnings) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if w.Enabled(e.Level) {
		return ce.AddCore(e, w)
	}
	return ce
}
func (w warnings) Write(e zapcore.Entry, _ []zapcore.Field) error { w.c <- e.Message; return nil }
func (w warnings) Sync() error                                    { return nil }
