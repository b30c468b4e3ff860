package logonce

import "testing"

func TestSet(t *testing.T) {
	var s Set[string]
	steps := []struct {
		op, key, reason string
		want            bool
	}{
		{"note", "a", "x", true},
		{"note", "a", "x", false}, // same pass, same reason
		{"note", "b", "y", true},
		{"end", "", "", false},
		{"note", "a", "x", false}, // still there next pass
		{"note", "b", "z", true},  // reason changed
		{"end", "", "", false},
		{"end", "", "", false},   // a and b not noted in the last pass: forgotten
		{"note", "a", "x", true}, // back again: news
		{"forget", "a", "", false},
		{"note", "a", "x", true},
	}
	for i, st := range steps {
		switch st.op {
		case "note":
			if got := s.Note(st.key, st.reason); got != st.want {
				t.Errorf("step %d: Note(%q, %q) = %v, want %v", i, st.key, st.reason, got, st.want)
			}
		case "forget":
			s.Forget(st.key)
		case "end":
			s.EndPass()
		}
	}
	if s.Len() != 1 {
		t.Errorf("Len = %d, want 1", s.Len())
	}
}
