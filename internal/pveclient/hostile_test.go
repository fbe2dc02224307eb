package pveclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// Hostile or broken answers of the Proxmox API, through the real go-proxmox
// client against the simulator: each is an error that says what is wrong,
// never a panic, a hang or a body read whole into memory.
func TestHostileAnswersAreErrors(t *testing.T) {
	srv := startSim(t)
	tests := []struct {
		name    string
		fault   pvesim.Fault
		wantErr string
		wantIs  error
	}{
		{name: "not JSON", fault: pvesim.Fault{Kind: pvesim.FaultRawReply, Message: "<html>proxy error</html>"},
			wantErr: "the answer is not Proxmox API JSON"},
		{name: "truncated JSON", fault: pvesim.Fault{Kind: pvesim.FaultRawReply, Message: `{"data":{"version":"8.`},
			wantErr: "unexpected end of JSON input"},
		{name: "wrong type", fault: pvesim.Fault{Kind: pvesim.FaultRawReply, Message: `{"data":{"version":8}}`},
			wantErr: "cannot unmarshal number"},
		{name: "missing field", fault: pvesim.Fault{Kind: pvesim.FaultRawReply, Message: `{"data":{"release":"8.2"}}`},
			wantErr: "/version answered without a version"},
		{name: "null data", fault: pvesim.Fault{Kind: pvesim.FaultRawReply, Message: `{"data":null}`},
			wantErr: "/version answered without a version"},
		{name: "a list, not an object", fault: pvesim.Fault{Kind: pvesim.FaultRawReply, Message: `[1,2,3]`},
			wantErr: "cannot unmarshal array"},
		{name: "huge body", fault: pvesim.Fault{Kind: pvesim.FaultRawReply, Message: `{"data":{"version":"` + strings.Repeat("8", 17<<20) + `"}}`},
			wantIs: ErrResponseTooLarge, wantErr: "more than 16777216"},
		{name: "answer later than the timeout", fault: pvesim.Fault{Kind: pvesim.FaultDelay, Delay: time.Minute},
			wantErr: "timed out"},
		{name: "served, then answered later than the timeout", fault: pvesim.Fault{Kind: pvesim.FaultDelayAfter, Delay: time.Minute},
			wantErr: "timed out"},
		{name: "connection dropped", fault: pvesim.Fault{Kind: pvesim.FaultDropBefore}, wantErr: "EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(Config{URL: srv.URL(), TokenID: srv.TokenID(), TokenSecret: srv.TokenSecret(), RootCAs: srv.RootCAs(), Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			tt.fault.Path = "/version"
			srv.Inject(tt.fault)
			t.Cleanup(srv.ClearFaults)
			err = Check(context.Background(), c, "")
			if err == nil {
				t.Fatal("Check accepted it")
			}
			if !strings.Contains(err.Error(), tt.wantErr) || (tt.wantIs != nil && !errors.Is(err, tt.wantIs)) {
				t.Errorf("error = %v\nwant it to contain %q (is %v)", err, tt.wantErr, tt.wantIs)
			}
			if len(err.Error()) > 4<<10 {
				t.Errorf("the error is %d bytes: it echoes the answer", len(err.Error()))
			}
		})
	}
}

// rawAPI serves every request on a plain TCP listener with answer, which
// writes the raw HTTP reply: for answers no well-behaved server gives.
func rawAPI(t *testing.T, answer func(w *bufio.Writer)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				if _, err := http.ReadRequest(bufio.NewReader(conn)); err != nil {
					return
				}
				w := bufio.NewWriter(conn)
				answer(w)
				w.Flush()
				<-done
			}()
		}
	}()
	return "http://" + ln.Addr().String() + "/api2/json"
}

// A body that never ends, sent slowly (slow loris) or as fast as it goes
// without a length, is cut at the timeout or at the size bound.
func TestEndlessAnswersAreCut(t *testing.T) {
	tests := []struct {
		name    string
		answer  func(w *bufio.Writer)
		wantErr string
		wantIs  error
	}{
		{"headers and then one byte at a time", func(w *bufio.Writer) {
			w.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"data\":")
			for range 600 { // a minute, far past the timeout
				if w.WriteByte(' ') != nil || w.Flush() != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}, "context deadline exceeded", nil},
		{"headers one byte at a time", func(w *bufio.Writer) {
			for _, b := range []byte("HTTP/1.1 200 OK\r\nX-Slow: " + strings.Repeat("a", 600)) {
				if w.WriteByte(b) != nil || w.Flush() != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}, "context deadline exceeded", nil},
		{"an endless chunked body", func(w *bufio.Writer) {
			w.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
			fmt.Fprintf(w, "%x\r\n{\"data\":\"\r\n", 9)
			chunk := strings.Repeat("x", 64<<10)
			for range 1 << 12 { // 256 MiB, far past the bound
				if _, err := fmt.Fprintf(w, "%x\r\n%s\r\n", len(chunk), chunk); err != nil {
					return
				}
			}
		}, "more than 16777216 bytes", ErrResponseTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(Config{URL: rawAPI(t, tt.answer), TokenID: "felhom@pve!agent", TokenSecret: "x", Timeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			var v map[string]any
			err = c.Get(context.Background(), "/version", &v)
			if err == nil {
				t.Fatalf("accepted: %v", v)
			}
			if !strings.Contains(err.Error(), tt.wantErr) || (tt.wantIs != nil && !errors.Is(err, tt.wantIs)) {
				t.Errorf("error = %v\nwant it to contain %q (is %v)", err, tt.wantErr, tt.wantIs)
			}
		})
	}
}
