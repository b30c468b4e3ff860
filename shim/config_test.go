package shim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"
)

func TestLoadConfig(t *testing.T) {
	sysfs := t.TempDir()
	file := filepath.Join(sysfs, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	base := map[string]string{"IVSHIM_SYSFS": sysfs}
	load := func(kv ...string) (Config, error) {
		e := env(kv...)
		for k, v := range base {
			if _, ok := e[k]; !ok {
				e[k] = v
			}
		}
		return LoadConfig(func(k string) string { return e[k] })
	}

	c, err := load()
	if err != nil || c.Verbose != 0 || c.Log.Format != "" || c.Job != "" || c.VMID != ([16]byte{}) || c.Sysfs != sysfs {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	c, err = load("IVSHIM_VERBOSE", "2", "IVSHIM_LOG", "console:debug", "IVSHIM_JOB", "j-1.a",
		"IVSHIM_VM_ID", "00112233-4455-6677-8899-aabbccddeeff")
	if err != nil || c.Verbose != 2 || c.Log != (LogSpec{"console", zapcore.DebugLevel}) || c.Job != "j-1.a" ||
		c.VMID[0] != 0x00 || c.VMID[15] != 0xff || c.VMIDSource != "IVSHIM_VM_ID" {
		t.Fatalf("all set: %+v, %v", c, err)
	}
	// Stall reports: on with IVSHIM_VERBOSE unless set, as set otherwise.
	for _, tc := range []struct {
		kv   []string
		want int
	}{
		{nil, 0},
		{[]string{"IVSHIM_VERBOSE", "1"}, DefaultStallSeconds},
		{[]string{"IVSHIM_VERBOSE", "1", "IVSHIM_STALL_SECONDS", "0"}, 0},
		{[]string{"IVSHIM_STALL_SECONDS", "7"}, 7},
		{[]string{"IVSHIM_VERBOSE", "2", "IVSHIM_STALL_SECONDS", "86400"}, 86400},
	} {
		if c, err := load(tc.kv...); err != nil || c.StallSeconds != tc.want {
			t.Errorf("%q: stall seconds %d, %v; want %d", tc.kv, c.StallSeconds, err, tc.want)
		}
	}
	if c, _ := load("IVSHIM_LOG", "json"); c.Log != (LogSpec{"json", zapcore.InfoLevel}) {
		t.Errorf("json: %+v", c.Log)
	}

	// The SMBIOS UUID is the default VM id when readable.
	dmi := filepath.Join(sysfs, "class", "dmi", "id")
	if err := os.MkdirAll(dmi, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dmi, "product_uuid"), []byte("0f0e0d0c-0b0a-0908-0706-050403020100\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	if c, err := load(); err != nil || c.VMID[0] != 0x0f || !strings.HasSuffix(c.VMIDSource, "product_uuid") {
		t.Errorf("smbios uuid: %+v, %v", c, err)
	}

	bad := [][]string{
		{"IVSHIM_VERBOSE", "3"},
		{"IVSHIM_VERBOSE", "yes"},
		{"IVSHIM_LOG", "xml"},
		{"IVSHIM_LOG", "json:loud"},
		{"IVSHIM_LOG", ":debug"},
		{"IVSHIM_JOB", "a/b"},
		{"IVSHIM_VM_ID", "not-a-uuid"},
		{"IVSHIM_VM_ID", "00000000-0000-0000-0000-000000000000"},
		{"IVSHIM_STALL_SECONDS", "-1"},
		{"IVSHIM_STALL_SECONDS", "86401"},
		{"IVSHIM_STALL_SECONDS", "1.5"},
		{"IVSHIM_STALL_SECONDS", "soon"},
		{"IVSHIM_SYSFS", "relative/sys"},
		{"IVSHIM_SYSFS", filepath.Join(sysfs, "missing")},
		{"IVSHIM_SYSFS", file},
	}
	for _, kv := range bad {
		_, err := load(kv...)
		if err == nil || !strings.Contains(err.Error(), kv[0]+"=") && !strings.Contains(err.Error(), kv[0]+":") {
			t.Errorf("%s=%q: error %v does not name the variable", kv[0], kv[1], err)
		}
	}
	// Every bad variable is reported at once.
	_, err = load("IVSHIM_VERBOSE", "9", "IVSHIM_LOG", "xml")
	if err == nil || !strings.Contains(err.Error(), "IVSHIM_VERBOSE") || !strings.Contains(err.Error(), "IVSHIM_LOG") {
		t.Errorf("two bad variables: %v", err)
	}
}
