// Command ivshimctl asks the local ivshim-broker about its jobs, regions and VMs.
package main

import (
	"context"
	"os"

	"ivshim.dev/ivshim/broker/ctl"
)

func main() {
	os.Exit(ctl.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
