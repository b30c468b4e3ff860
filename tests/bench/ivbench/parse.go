package ivbench

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
)

// Block is one "# Benchmarking" block of IMB-style output.
type Block struct {
	// Name is the benchmark, e.g. "PingPong"; Procs is the "#processes" line.
	Name  string
	Procs int
	Rows  []Row
}

// Row is one measured line. For PingPong, TMin, TMax and TAvg all hold t[usec] and MBps the
// Mbytes/sec column; for the others MBps is zero. Barrier rows have Bytes zero.
type Row struct {
	Bytes, Reps      int
	TMin, TMax, TAvg float64 // µs
	MBps             float64
}

// Parse reads the blocks of IMB or ivbench output. Lines outside blocks are ignored; a row that
// does not match its block's header is an error.
func Parse(out string) ([]Block, error) {
	var blocks []Block
	var cur *Block
	var cols []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "# Benchmarking "):
			blocks = append(blocks, Block{Name: strings.TrimSpace(strings.TrimPrefix(line, "# Benchmarking "))})
			cur, cols = &blocks[len(blocks)-1], nil
		case cur == nil || line == "":
		case strings.HasPrefix(line, "# #processes = "):
			p, err := strconv.Atoi(strings.TrimPrefix(line, "# #processes = "))
			if err != nil {
				return nil, fmt.Errorf("parse IMB output line %d %q: %w", n, line, err)
			}
			cur.Procs = p
		case strings.HasPrefix(line, "#bytes") || strings.HasPrefix(line, "#repetitions"):
			cols = strings.Fields(line)
		case strings.HasPrefix(line, "#"):
		case cols != nil:
			row, err := parseRow(cols, strings.Fields(line))
			if err != nil {
				return nil, fmt.Errorf("parse IMB output line %d %q: %w", n, line, err)
			}
			cur.Rows = append(cur.Rows, row)
		}
	}
	return blocks, sc.Err()
}

// parseRow maps the fields of a row to the columns of its block's header.
func parseRow(cols, fields []string) (Row, error) {
	if len(fields) != len(cols) {
		return Row{}, fmt.Errorf("%d fields for %d columns", len(fields), len(cols))
	}
	var r Row
	for i, c := range cols {
		v, err := strconv.ParseFloat(fields[i], 64)
		if err != nil {
			return Row{}, fmt.Errorf("column %s: %w", c, err)
		}
		switch c {
		case "#bytes":
			r.Bytes = int(v)
		case "#repetitions":
			r.Reps = int(v)
		case "t[usec]":
			r.TMin, r.TMax, r.TAvg = v, v, v
		case "t_min[usec]":
			r.TMin = v
		case "t_max[usec]":
			r.TMax = v
		case "t_avg[usec]":
			r.TAvg = v
		case "Mbytes/sec":
			r.MBps = v
		}
	}
	return r, nil
}
