// Command ivshim-broker is the ivshim host daemon: it gives the VMs of each MPI job on this host
// one shared-memory region. See broker/README-operators.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"ivshim.dev/ivshim/broker/daemon"
)

func main() {
	path := flag.String("config", daemon.DefaultConfigPath, "configuration file")
	check := flag.Bool("check", false, "check the configuration file and exit")
	flag.Parse()
	c, err := daemon.Load(*path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ivshim-broker: %v\n", err)
		os.Exit(2)
	}
	if *check {
		fmt.Printf("%s: ok\n", *path)
		return
	}
	log, err := daemon.NewLogger(c)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ivshim-broker: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := daemon.Run(ctx, c, log); err != nil {
		log.Error("ivshim-broker stopped", zap.Error(err))
		log.Sync()
		os.Exit(1)
	}
	log.Info("ivshim-broker stopped")
	log.Sync()
}
