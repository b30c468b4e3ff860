package ivbench

import (
	"reflect"
	"testing"
)

// imbSample is trimmed output of IMB-MPI1 2021; ivbench prints the same shape.
const imbSample = `#------------------------------------------------------------
#    Intel(R) MPI Benchmarks 2021.11, MPI-1 part
#------------------------------------------------------------
# List of Benchmarks to run:
# PingPong
# Barrier
# Allreduce

#---------------------------------------------------
# Benchmarking PingPong
# #processes = 2
# ( 2 additional processes waiting in MPI_Barrier)
#---------------------------------------------------
       #bytes #repetitions      t[usec]   Mbytes/sec
            0         1000         0.15         0.00
            1         1000         0.16         6.25

#---------------------------------------------------
# Benchmarking Barrier
# #processes = 4
#---------------------------------------------------
 #repetitions  t_min[usec]  t_max[usec]  t_avg[usec]
         1000         3.81         3.95         3.90

#----------------------------------------------------------------
# Benchmarking Allreduce
# #processes = 2
#----------------------------------------------------------------
       #bytes #repetitions  t_min[usec]  t_max[usec]  t_avg[usec]
            0         1000         0.03         0.04         0.04
            4         1000         0.28         0.29         0.28


# All processes entering MPI_Finalize
`

func TestParse(t *testing.T) {
	got, err := Parse(imbSample)
	if err != nil {
		t.Fatal(err)
	}
	want := []Block{
		{Name: "PingPong", Procs: 2, Rows: []Row{
			{Bytes: 0, Reps: 1000, TMin: 0.15, TMax: 0.15, TAvg: 0.15},
			{Bytes: 1, Reps: 1000, TMin: 0.16, TMax: 0.16, TAvg: 0.16, MBps: 6.25},
		}},
		{Name: "Barrier", Procs: 4, Rows: []Row{{Reps: 1000, TMin: 3.81, TMax: 3.95, TAvg: 3.90}}},
		{Name: "Allreduce", Procs: 2, Rows: []Row{
			{Bytes: 0, Reps: 1000, TMin: 0.03, TMax: 0.04, TAvg: 0.04},
			{Bytes: 4, Reps: 1000, TMin: 0.28, TMax: 0.29, TAvg: 0.28},
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Parse =\n%+v\nwant\n%+v", got, want)
	}
}

func TestParseBadRow(t *testing.T) {
	_, err := Parse("# Benchmarking PingPong\n#bytes #repetitions t[usec] Mbytes/sec\n0 1000 0.15\n")
	if err == nil {
		t.Error("Parse accepted a row with a missing column")
	}
}
