// Package logonce keeps a daemon's log readable when a condition persists: a loop that meets
// the same problem on every pass logs it when it starts or changes, not on every pass.
package logonce

// Set remembers the reason last noted for each key. Keys are forgotten explicitly (Forget) or,
// in a loop that notes every current problem on each pass, by EndPass. The zero value is ready;
// a Set is not safe for concurrent use.
type Set[K comparable] struct {
	last map[K]string
	pass map[K]bool
}

// Note records reason for k and reports whether it is news: k was not noted, was forgotten
// since, or had another reason. The caller logs when it is.
func (s *Set[K]) Note(k K, reason string) bool {
	if s.pass == nil {
		s.pass = map[K]bool{}
	}
	s.pass[k] = true
	if r, ok := s.last[k]; ok && r == reason {
		return false
	}
	if s.last == nil {
		s.last = map[K]string{}
	}
	s.last[k] = reason
	return true
}

// Forget drops k: its next Note is news.
func (s *Set[K]) Forget(k K) {
	delete(s.last, k)
	delete(s.pass, k)
}

// EndPass forgets every key not noted since the previous EndPass (the problem went away) and
// begins the next pass.
func (s *Set[K]) EndPass() {
	for k := range s.last {
		if !s.pass[k] {
			delete(s.last, k)
		}
	}
	clear(s.pass)
}

// Len is the number of keys remembered.
func (s *Set[K]) Len() int { return len(s.last) }
