package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestBelowGivesDistinctBindablePortsUnderTheBound(t *testing.T) {
	tests := []struct {
		name string
		max  int
		n    int
	}{
		{"smallint", SmallintMax, 6},
		{"narrow", lowest + 10, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ports, err := Below(tt.max, tt.n)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[int]bool{}
			for _, p := range ports {
				if p < lowest || p > tt.max {
					t.Errorf("port %d outside [%d, %d]", p, lowest, tt.max)
				}
				if seen[p] {
					t.Errorf("port %d given twice", p)
				}
				seen[p] = true
				l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
				if err != nil {
					t.Errorf("port %d is not free after the call: %v", p, err)
					continue
				}
				l.Close()
			}
			if len(ports) != tt.n {
				t.Errorf("got %d ports, want %d", len(ports), tt.n)
			}
		})
	}
}

func TestBelowRefusesABoundWithoutRoom(t *testing.T) {
	if _, err := Below(lowest+1, 3); err == nil {
		t.Fatal("Below with no room: no error")
	}
}

func TestAnyGivesDistinctPorts(t *testing.T) {
	ports, err := Any(3)
	if err != nil {
		t.Fatal(err)
	}
	if ports[0] == ports[1] || ports[1] == ports[2] || ports[0] == ports[2] {
		t.Errorf("ports %v not distinct", ports)
	}
}
