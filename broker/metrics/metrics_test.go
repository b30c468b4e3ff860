package metrics_test

import (
	"bufio"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"ivshim.dev/ivshim/broker/metrics"
)

// sampleLine is a Prometheus text-format sample: name, optional labels, value.
var sampleLine = regexp.MustCompile(`^[a-z_]+(\{[a-z]+="[^"]*"\})? [0-9.e+-]+$`)

func TestText(t *testing.T) {
	var m metrics.Broker
	m.Regions.Set(2)
	m.Attaches.Inc()
	m.AttachErrors.Inc()
	m.AttachErrors.Inc()
	m.AttachTime.Observe(3 * time.Millisecond)
	m.AttachTime.Observe(20 * time.Second)
	var b strings.Builder
	if err := m.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	text := b.String()
	for _, want := range []string{
		"ivshim_broker_regions 2\n",
		`ivshim_broker_attach_total{result="ok"} 1` + "\n",
		`ivshim_broker_attach_total{result="error"} 2` + "\n",
		`ivshim_broker_attach_seconds_bucket{le="0.001"} 0` + "\n",
		`ivshim_broker_attach_seconds_bucket{le="0.005"} 1` + "\n",
		`ivshim_broker_attach_seconds_bucket{le="10"} 1` + "\n",
		`ivshim_broker_attach_seconds_bucket{le="+Inf"} 2` + "\n",
		"ivshim_broker_attach_seconds_sum 20.003\n",
		"ivshim_broker_attach_seconds_count 2\n",
		"# TYPE ivshim_broker_attach_seconds histogram\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "# HELP ") && !strings.HasPrefix(line, "# TYPE ") && !sampleLine.MatchString(line) {
			t.Errorf("malformed line %q", line)
		}
	}
}

func TestTrafficPairs(t *testing.T) {
	var m metrics.Broker
	m.Traffic = func() ([]metrics.Pair, error) {
		return []metrics.Pair{{Src: "vm0", Dst: "vm1", Frames: 3, Bytes: 3000}, {Src: `a"b\c`, Dst: metrics.Elsewhere, Frames: 1, Bytes: 60}}, nil
	}
	var b strings.Builder
	if err := m.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"# TYPE ivshim_broker_vm_network_bytes_total counter\n",
		`ivshim_broker_vm_network_frames_total{src="vm0",dst="vm1"} 3` + "\n",
		`ivshim_broker_vm_network_bytes_total{src="vm0",dst="vm1"} 3000` + "\n",
		`ivshim_broker_vm_network_bytes_total{src="a\"b\\c",dst="elsewhere"} 60` + "\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, b.String())
		}
	}
	m.Traffic = func() ([]metrics.Pair, error) { return nil, errors.New("map gone") }
	if err := m.WriteText(&b); err == nil || !strings.Contains(err.Error(), "map gone") {
		t.Errorf("WriteText with failing traffic: %v", err)
	}
}
