package shim

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// repoRoot is the repository, seen from this package's directory.
const repoRoot = ".."

// envLiteral is a string literal that is exactly a variable name: "IVSHIM_JOB", not a message
// such as "IVSHIM_JOB=%q: ..." and not a C macro such as IVSHIM_CTL_ABI.
var envLiteral = regexp.MustCompile(`"(IVSHIM_[A-Z0-9_]+)"`)

// envVarsFile holds the table itself, whose names read nothing.
var envVarsFile = filepath.Join("shim", "envvars.go")

// envReaders scans the Go and C sources outside tests/ (and outside _test.go files, testdata
// and the table's own file) and returns, for each IVSHIM_* name used as a string literal, whether C and Go
// files use it, with the files for messages.
func envReaders(t *testing.T) map[string]*envUse {
	t.Helper()
	uses := map[string]*envUse{}
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repoRoot, path)
		if d.IsDir() {
			switch {
			case rel == ".":
				return nil
			case strings.HasPrefix(d.Name(), "."), d.Name() == "testdata", d.Name() == "vendor",
				rel == "tests", rel == "build":
				return filepath.SkipDir
			}
			return nil
		}
		ext := filepath.Ext(path)
		if (ext != ".go" && ext != ".c" && ext != ".h") || strings.HasSuffix(path, "_test.go") || rel == envVarsFile {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range envLiteral.FindAllStringSubmatch(string(b), -1) {
			u := uses[m[1]]
			if u == nil {
				u = &envUse{}
				uses[m[1]] = u
			}
			if ext == ".go" {
				u.Go = true
			} else {
				u.C = true
			}
			if !slices.Contains(u.files, rel) {
				u.files = append(u.files, rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return uses
}

type envUse struct {
	C, Go bool
	files []string
}

func TestEnvVarsTableMatchesSources(t *testing.T) {
	uses := envReaders(t)
	if len(uses) == 0 {
		t.Fatal("no IVSHIM_* variable found in the sources: the scan is broken")
	}
	listed := map[string]EnvVar{}
	for _, v := range EnvVars {
		if _, dup := listed[v.Name]; dup {
			t.Errorf("%s listed twice", v.Name)
		}
		listed[v.Name] = v
		if v.Values == "" || v.Meaning == "" || !v.Front && !v.Go {
			t.Errorf("%s: incomplete entry %+v", v.Name, v)
		}
		u := uses[v.Name]
		switch {
		case u == nil:
			t.Errorf("%s is listed in EnvVars but nothing outside tests/ reads it", v.Name)
		case u.C != v.Front || u.Go != v.Go:
			t.Errorf("%s: EnvVars says front %v, Go %v; the sources say C %v, Go %v (%s)",
				v.Name, v.Front, v.Go, u.C, u.Go, strings.Join(u.files, ", "))
		}
	}
	for name, u := range uses {
		if _, ok := listed[name]; !ok {
			t.Errorf("%s is used in %s but missing from EnvVars (shim/envvars.go) and the README", name, strings.Join(u.files, ", "))
		}
	}
}

// readmeEnvVars returns the variables in the README's tables under "Running an MPI program
// with the shim" (up to the next second-level heading).
func readmeEnvVars(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Running an MPI program with the shim\n")
	if !ok {
		t.Fatal(`README.md has no section "## Running an MPI program with the shim"`)
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	row := regexp.MustCompile("(?m)^\\| `(IVSHIM_[A-Z0-9_]+)` \\|")
	var names []string
	for _, m := range row.FindAllStringSubmatch(section, -1) {
		names = append(names, m[1])
	}
	return names
}

func TestEnvVarsTableMatchesREADME(t *testing.T) {
	readme := readmeEnvVars(t)
	var table []string
	for _, v := range EnvVars {
		table = append(table, v.Name)
	}
	if !slices.Equal(readme, table) {
		sorted := func(s []string) []string { s = slices.Clone(s); sort.Strings(s); return s }
		t.Errorf("README.md's variable table lists %v,\nshim/envvars.go's EnvVars %v\n(in this order; sorted: %v vs %v)",
			readme, table, sorted(readme), sorted(table))
	}
}
