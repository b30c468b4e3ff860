package ivshmem

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// guestRules is the udev rule shipped for guests: it gives a group access to the ivshmem
// device's resource2, which Discover maps.
const guestRules = "../broker/dist/99-ivshim-guest.rules"

type udevKey struct{ key, op, value string }

var udevToken = regexp.MustCompile(`^\s*([A-Z]+(?:\{[^}]*\})?)\s*(==|!=|\+=|-=|:=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)`)

// parseUdevRules returns the rules of a udev rules file, each as its key-operator-value list.
// It fails on anything it does not understand rather than skip it.
func parseUdevRules(t *testing.T, path string) [][]udevKey {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rules [][]udevKey
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			t.Fatalf("%s:%d: continuation line; keep each rule on one line", path, n+1)
		}
		var rule []udevKey
		for rest := line; strings.TrimSpace(rest) != ""; {
			m := udevToken.FindStringSubmatch(rest)
			if m == nil {
				t.Fatalf("%s:%d: cannot parse %q", path, n+1, rest)
			}
			rule = append(rule, udevKey{m[1], m[2], m[3]})
			rest = rest[len(m[0]):]
		}
		rules = append(rules, rule)
	}
	return rules
}

// udevArgv splits a RUN value into arguments as udev does: on spaces, keeping single- or
// double-quoted words together without their quotes.
func udevArgv(s string) []string {
	var argv []string
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		if q := s[0]; q == '\'' || q == '"' {
			end := strings.IndexByte(s[1:], q)
			if end < 0 {
				return append(argv, "UNTERMINATED "+s)
			}
			argv = append(argv, s[1:1+end])
			s = s[2+end:]
			continue
		}
		word, rest, _ := strings.Cut(s, " ")
		argv = append(argv, word)
		s = rest
	}
	return argv
}

var rulesChange = regexp.MustCompile(`/bin/chgrp (\S+) /sys%p/resource2 && /bin/chmod ([0-7]{3,4}) /sys%p/resource2`)

// TestGuestUdevRule keeps the shipped rule in step with what Discover needs: it must match the
// ivshmem device by the IDs FindPCI looks for, and give a group, never others, read-write access
// to resource2 (Open maps it read-write).
func TestGuestUdevRule(t *testing.T) {
	rules := parseUdevRules(t, guestRules)
	if len(rules) != 1 {
		t.Fatalf("%s: %d rules, want 1", guestRules, len(rules))
	}
	match := map[string]string{}
	var runs []string
	for _, k := range rules[0] {
		switch {
		case k.op == "==":
			match[k.key] = k.value
		case k.key == "RUN" && k.op == "+=":
			runs = append(runs, k.value)
		default:
			// GROUP, MODE and OWNER would apply to a device node, which an ivshmem device
			// does not have: they would only make the rule look as if it did something.
			t.Errorf("%s: unexpected %s%s%q", guestRules, k.key, k.op, k.value)
		}
	}
	if !strings.Contains("|"+match["ACTION"]+"|", "|add|") {
		t.Errorf("ACTION==%q, want it to match add", match["ACTION"])
	}
	for key, want := range map[string]string{
		"SUBSYSTEM":    "pci",
		"ATTR{vendor}": fmt.Sprintf("%#04x", PCIVendorRedHat),
		"ATTR{device}": fmt.Sprintf("%#04x", PCIDeviceIvshmem),
	} {
		if match[key] != want {
			t.Errorf("%s==%q, want %q", key, match[key], want)
		}
	}
	if len(runs) != 1 {
		t.Fatalf("%d RUN keys, want 1", len(runs))
	}
	run := runs[0]
	// udev expands %p (the device path) and $ sequences; nothing else may look like one.
	if s := strings.ReplaceAll(strings.ReplaceAll(run, "%p", ""), "%%", ""); strings.ContainsAny(s, "%$") {
		t.Errorf("RUN %q has a udev substitution other than %%p", run)
	}
	argv := udevArgv(run)
	if len(argv) != 3 || argv[0] != "/bin/sh" || argv[1] != "-c" {
		t.Fatalf("RUN splits into %q, want /bin/sh -c SCRIPT", argv)
	}
	script := argv[2]
	m := rulesChange.FindStringSubmatch(script)
	if m == nil {
		t.Fatalf("script %q lacks %q", script, rulesChange)
	}
	mode, _ := strconv.ParseUint(m[2], 8, 32)
	if mode&0o007 != 0 || mode&0o060 != 0o060 || mode&0o7000 != 0 {
		t.Errorf("chmod %s: want read-write for the group, nothing for others, no special bits", m[2])
	}
	t.Run("run", func(t *testing.T) { runGuestRule(t, script, m[1], os.FileMode(mode)) })
}

// runGuestRule runs the rule's script against a fake device directory in which resource2
// appears only after a while (a hot-plugged device's resource files follow its "add" event),
// with the group replaced by one this machine has, and once with a group that does not exist:
// then the file must stay as it was.
func runGuestRule(t *testing.T, script, group string, mode os.FileMode) {
	for _, p := range []string{"/bin/sh", "/bin/chgrp", "/bin/chmod", "/bin/sleep"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("cannot run the rule's script here: %v", err)
		}
	}
	// As root, a group other than the file's own shows that chgrp ran; a user can only give
	// files to its own groups.
	g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if os.Getuid() == 0 {
		for _, name := range []string{"nogroup", "nobody", "daemon"} {
			if other, err2 := user.LookupGroup(name); err2 == nil && other.Gid != strconv.Itoa(os.Getgid()) {
				g, err = other, nil
				break
			}
		}
	}
	if err != nil {
		t.Skipf("no name for a group to test with: %v", err)
	}
	gid, _ := strconv.Atoi(g.Gid)
	for _, c := range []struct {
		group string
		ok    bool
	}{{g.Name, true}, {"ivshim-test-no-such-group", false}} {
		dev := filepath.Join(t.TempDir(), "devices", "pci0000:00", "0000:00:05.0")
		if err := os.MkdirAll(dev, 0o755); err != nil {
			t.Fatal(err)
		}
		res := filepath.Join(dev, "resource2")
		s := strings.ReplaceAll(script, "/sys%p", dev)
		s = strings.ReplaceAll(s, "/bin/chgrp "+group+" ", "/bin/chgrp "+c.group+" ")
		go func() {
			time.Sleep(300 * time.Millisecond)
			os.WriteFile(res, nil, 0o600)
		}()
		out, err := exec.Command("/bin/sh", "-c", s).CombinedOutput()
		st, serr := os.Stat(res)
		if serr != nil {
			t.Fatalf("group %s: %v (script: %v, %s)", c.group, serr, err, out)
		}
		got := st.Mode().Perm()
		switch {
		case c.ok && (err != nil || got != mode || st.Sys().(*syscall.Stat_t).Gid != uint32(gid)):
			t.Errorf("group %s: script %v %s; resource2 mode %v gid %d, want %v gid %d", c.group, err, out, got, st.Sys().(*syscall.Stat_t).Gid, mode, gid)
		case !c.ok && (err == nil || got != 0o600):
			t.Errorf("missing group %s: script %v; resource2 mode %v, want it left 0600 and a failure", c.group, err, got)
		}
	}
}
