// Command guestexec is the launcher agent (an ssh stand-in) with which mpirun and mpiexec on
// the host start their daemons in the real guests of tests/libvirtreal:
//
//	guestexec [ssh options] GUEST COMMAND...
//
// As with ssh, options are skipped (Open MPI passes none to a non-ssh agent, hydra passes -x;
// the ones ssh documents as taking an argument take theirs) and the remaining words are joined
// by spaces and run by a shell in the guest: guestinit's agent (guestinit/agent.go) at
// GUEST (agentwire.Port) runs it as the guest's ordinary user. The command's standard output and error
// come back on guestexec's, and guestexec exits with its status. When guestexec ends early
// (killed), the connection drops and the agent kills the command's process group.
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"ivshim.dev/ivshim/tests/libvirtreal/agentwire"
)

const dialTimeout = 30 * time.Second

func main() {
	args := os.Args[1:]
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		opt := args[0]
		args = args[1:]
		if opt == "--" {
			break
		}
		if len(opt) == 2 && strings.ContainsRune("BbcDEeFIiJLlmOopQRSWw", rune(opt[1])) && len(args) > 0 {
			args = args[1:]
		}
	}
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "guestexec: usage: guestexec [ssh options] GUEST COMMAND...")
		os.Exit(255)
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort(args[0], fmt.Sprint(agentwire.Port)), dialTimeout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "guestexec: %v\n", err)
		os.Exit(255)
	}
	req, _ := json.Marshal(agentwire.Request{Cmd: strings.Join(args[1:], " ")})
	if _, err := c.Write(append(req, '\n')); err != nil {
		fmt.Fprintf(os.Stderr, "guestexec: %v\n", err)
		os.Exit(255)
	}
	for {
		stream, data, err := agentwire.ReadFrame(c)
		if err != nil {
			fmt.Fprintf(os.Stderr, "guestexec: connection to %s lost: %v\n", args[0], err)
			os.Exit(255)
		}
		switch stream {
		case agentwire.Stdout:
			os.Stdout.Write(data)
		case agentwire.Stderr:
			os.Stderr.Write(data)
		case agentwire.Exit:
			status, err := agentwire.ParseExit(data)
			if err != nil {
				fmt.Fprintf(os.Stderr, "guestexec: %s: %v\n", args[0], err)
				os.Exit(255)
			}
			os.Exit(status)
		}
	}
}
