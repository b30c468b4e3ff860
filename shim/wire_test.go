package shim

import (
	"errors"
	"strings"
	"testing"

	"ivshim.dev/ivshim/ivshmem"
)

func TestHelloRoundTripAndValidation(t *testing.T) {
	h := hello{Flags: helloHasRegion, VMIndex: 3, Host: ivshmem.HostID{1, 2, 3}, Generation: 9, JobHash: 77, Proposal: 0xabc}
	b := h.encode()
	if len(b) != helloSize {
		t.Fatalf("hello is %d bytes", len(b))
	}
	if got, err := decodeHello(b); err != nil || got != h {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	bad := map[string]func(b []byte){
		"magic":            func(b []byte) { b[0] ^= 1 },
		"version":          func(b []byte) { b[4] = 2 },
		"size":             func(b []byte) { b[6] = 65 },
		"unknown flag":     func(b []byte) { b[8] |= 0x80 },
		"region and fatal": func(b []byte) { b[8] |= byte(helloFatal) },
		"zero host":        func(b []byte) { clear(b[16:32]) },
		"zero proposal":    func(b []byte) { clear(b[48:56]) },
	}
	for name, mutate := range bad {
		c := append([]byte(nil), b...)
		mutate(c)
		if _, err := decodeHello(c); !errors.Is(err, errMalformed) {
			t.Errorf("%s: %v, want errMalformed", name, err)
		}
	}
	if _, err := decodeHello(b[:10]); !errors.Is(err, errMalformed) {
		t.Errorf("short: %v", err)
	}
}

func TestStatusRoundTripAndTruncation(t *testing.T) {
	s := status{Flags: statusFailed, Value: 5, Reason: "no free slot"}
	if got, err := decodeStatus(s.encode()); err != nil || got != s {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	long := status{Flags: statusFatal, Reason: strings.Repeat("é", 200)} // 400 bytes of UTF-8
	got, err := decodeStatus(long.encode())
	if err != nil || !got.fatal() || !got.failed() || len(got.Reason) > statusReasonMax || !strings.HasPrefix(long.Reason, strings.TrimSuffix(got.Reason, "?")) {
		t.Fatalf("truncated: %q, %v", got.Reason, err)
	}
	b := s.encode()
	b[3] = 0x10
	if _, err := decodeStatus(b); !errors.Is(err, errMalformed) {
		t.Errorf("unknown flag: %v", err)
	}
}

func TestFatalOfNamesFirstAndOthers(t *testing.T) {
	all := make([]status, 6)
	if err := fatalOf(all); err != nil {
		t.Fatalf("no fatal: %v", err)
	}
	all[2] = status{Flags: statusFailed, Reason: "slot"}
	all[3] = status{Flags: statusFatal, Reason: "corrupt"}
	all[5] = status{Flags: statusFatal, Reason: "also corrupt"}
	if err := fatalOf(all); err == nil || err.Error() != "rank 3 of 6 failed: corrupt (also failed: rank 5)" {
		t.Fatalf("fatalOf: %v", err)
	}
}
