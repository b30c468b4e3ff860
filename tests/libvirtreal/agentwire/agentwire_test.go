package agentwire

import (
	"bytes"
	"testing"
)

func TestFrames(t *testing.T) {
	var b bytes.Buffer
	for _, f := range []struct {
		stream byte
		data   []byte
	}{{Stdout, []byte("out\n")}, {Stderr, nil}, {Exit, ExitStatus(137)}} {
		if err := WriteFrame(&b, f.stream, f.data); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []byte{Stdout, Stderr, Exit} {
		stream, data, err := ReadFrame(&b)
		if err != nil || stream != want {
			t.Fatalf("frame %d: stream %d, %v", want, stream, err)
		}
		if stream == Exit {
			if st, err := ParseExit(data); err != nil || st != 137 {
				t.Errorf("exit status %d, %v; want 137", st, err)
			}
		}
	}
	if _, _, err := ReadFrame(bytes.NewReader([]byte{Stdout, 0xff, 0, 0, 0})); err == nil {
		t.Error("a frame longer than MaxFrame was accepted")
	}
	if _, _, err := ReadFrame(bytes.NewReader([]byte{Stdout, 0, 0, 0, 4, 'a'})); err == nil {
		t.Error("a truncated frame was accepted")
	}
	if _, err := ParseExit([]byte{1}); err == nil {
		t.Error("a short exit frame was accepted")
	}
}
