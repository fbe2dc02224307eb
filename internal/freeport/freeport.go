// Package freeport picks TCP ports on 127.0.0.1 that are free at the moment
// of the call, optionally below a bound.
//
// The bound exists for Temporal on PostgreSQL: its schema stores the
// membership (RPC) ports of the cluster's services as SMALLINT, so a service
// on a port above 32767 cannot be recorded and every request fails with "Not
// enough hosts to serve the request". The kernel's ephemeral ports (what
// port 0 gives) lie above that bound, so such ports are picked at random
// below it and checked by binding them.
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
)

// SmallintMax is the highest port PostgreSQL's SMALLINT columns hold.
const SmallintMax = 32767

// lowest is the first port Below picks from: under it lie the ports of
// well-known services.
const lowest = 10000

// Any returns n distinct free ports on 127.0.0.1 chosen by the kernel.
func Any(n int) ([]int, error) {
	return pick(n, func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") })
}

// Below returns n distinct free ports on 127.0.0.1, each at most max.
func Below(max, n int) ([]int, error) {
	if max < lowest+n {
		return nil, fmt.Errorf("freeport: no room for %d ports between %d and %d", n, lowest, max)
	}
	return pick(n, func() (net.Listener, error) {
		var err error
		for range 200 {
			port := lowest + rand.IntN(max-lowest+1)
			l, e := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if e == nil {
				return l, nil
			}
			err = e
		}
		return nil, fmt.Errorf("no free port between %d and %d after 200 tries: %w", lowest, max, err)
	})
}

// pick holds every listener until all n are chosen, so no port is picked
// twice, and releases them on return.
func pick(n int, listen func() (net.Listener, error)) ([]int, error) {
	ports := make([]int, 0, n)
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for range n {
		l, err := listen()
		if err != nil {
			return nil, errors.Join(errors.New("freeport: reserve a port"), err)
		}
		held = append(held, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
