package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"

	"go.uber.org/zap"

	"ivshim.dev/ivshim/broker"
	"ivshim.dev/ivshim/broker/api"
	"ivshim.dev/ivshim/broker/hypervisor"
	"ivshim.dev/ivshim/broker/libvirt"
	"ivshim.dev/ivshim/broker/netns"
	"ivshim.dev/ivshim/broker/traffic"
)

// NewLogger returns the broker's logger: zap's production JSON logger at level.
func NewLogger(c Config) (*zap.Logger, error) {
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(c.LogLevel)
	log, err := zc.Build()
	if err != nil {
		return nil, fmt.Errorf("logger: %w", err)
	}
	return log, nil
}

// OpenHypervisor connects to the hypervisor c names.
func OpenHypervisor(c Config, log *zap.Logger) (hypervisor.Hypervisor, error) {
	if c.Hypervisor == "netns" {
		return netns.Open(c.NetnsDir, log)
	}
	return libvirt.Open(c.LibvirtURI, libvirt.Live{}, log)
}

// Run runs the broker described by c until ctx ends (nil) or something fails: the hypervisor
// connection is lost, or an API listener dies.
func Run(ctx context.Context, c Config, log *zap.Logger) error {
	hv, err := OpenHypervisor(c, log)
	if err != nil {
		return err
	}
	defer hv.Close()
	host := c.HostID
	if host.IsZero() {
		if host, err = hv.HostID(); err != nil {
			return fmt.Errorf("host id (set host_id to override): %w", err)
		}
	}
	b, err := broker.New(c.BrokerConfig(host), hv, log)
	if err != nil {
		return err
	}
	defer b.Close()
	if c.CountTraffic {
		// Without eBPF (an old kernel, no CAP_BPF) the broker still manages regions.
		if tc, err := traffic.Open(); err != nil {
			log.Warn("traffic accounting off", zap.Error(err))
		} else {
			defer tc.Close()
			b.CountTraffic(tc)
		}
	}
	l, err := api.Listen(c.Socket)
	if err != nil {
		return err
	}
	defer l.Close()
	var ml net.Listener
	if c.MetricsListen != "" {
		if ml, err = net.Listen("tcp", c.MetricsListen); err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		defer ml.Close()
	}
	log.Info("ivshim-broker serving", zap.String("socket", c.Socket), zap.String("metrics_listen", c.MetricsListen))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	tasks := 0
	run := func(f func() error) {
		tasks++
		go func() {
			err := f()
			cancel()
			errc <- err
		}()
	}
	run(func() error { return b.Run(ctx) })
	run(func() error { return api.Serve(ctx, l, api.Handler(b, log)) })
	if ml != nil {
		run(func() error { return api.Serve(ctx, ml, api.MetricsHandler(b, log)) })
	}
	var errs []error
	for range tasks {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}
