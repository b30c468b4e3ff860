// Package agentwire is the wire format between guestexec (the launcher agent on the host) and
// guestinit's command agent in a guest: the one definition both sides use.
//
// The client connects to Port and sends one JSON line, Request. The agent answers with
// frames: a 1-byte stream id, a 4-byte big-endian length and that many bytes. Stdout and
// Stderr frames carry the command's output; the last frame, Exit, carries its 4-byte
// big-endian exit status (128+signal when it was killed). The client never writes after its
// request; the agent kills the command when the connection drops.
package agentwire

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Port is the agent's TCP port in every guest.
const Port = 7070

// EchoPort is the guest's UDP echo service: every datagram comes back as it is.
const EchoPort = 7071

// Request is the client's one line.
type Request struct {
	Cmd string `json:"cmd"` // run by /bin/sh -c as the guest's ordinary user
}

// Stream ids of frames.
const (
	Stdout = 1
	Stderr = 2
	Exit   = 3
)

// MaxFrame bounds a frame's length: anything longer is a broken stream.
const MaxFrame = 1 << 24

// WriteFrame writes one frame.
func WriteFrame(w io.Writer, stream byte, data []byte) error {
	var h [5]byte
	h[0] = stream
	binary.BigEndian.PutUint32(h[1:], uint32(len(data)))
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.Write(data)
	return err
}

// ReadFrame reads one frame.
func ReadFrame(r io.Reader) (stream byte, data []byte, err error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > MaxFrame {
		return 0, nil, fmt.Errorf("frame of %d bytes", n)
	}
	data = make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return 0, nil, err
	}
	return h[0], data, nil
}

// ExitStatus encodes an exit status for an Exit frame.
func ExitStatus(status int) []byte {
	return binary.BigEndian.AppendUint32(nil, uint32(status))
}

// ParseExit decodes an Exit frame.
func ParseExit(data []byte) (int, error) {
	if len(data) != 4 {
		return 0, fmt.Errorf("exit frame of %d bytes", len(data))
	}
	return int(binary.BigEndian.Uint32(data)), nil
}
