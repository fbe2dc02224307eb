package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/felhom/felhom-agent/internal/devserver"
	"github.com/felhom/felhom-agent/internal/visibility"
)

// serverChildEnv makes the soak's binary run the Temporal server instead
// of the soak: the soak starts it as a child process so that it can kill
// it with SIGKILL, and starts it again on the same SQLite file.
const serverChildEnv = "FELHOM_SOAK_SERVER"

type serverChildConfig struct {
	DBPath string `json:"db_path"`
	Addr   string `json:"addr"`
}

func runServerChild(raw string) int {
	var cfg serverChildConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "soak server:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	s, err := devserver.Start(ctx, devserver.Config{
		DBPath:           cfg.DBPath,
		FrontendAddr:     cfg.Addr,
		SearchAttributes: visibility.SearchAttributes(),
		Logger:           slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak server:", err)
		return 1
	}
	fmt.Println("READY " + s.FrontendAddr())
	<-ctx.Done()
	if err := s.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "soak server:", err)
		return 1
	}
	return 0
}

// serverProc is the Temporal server in its child process.
type serverProc struct {
	dbPath, logPath string
	cmd             *exec.Cmd

	mu   sync.Mutex
	addr string // the frontend: kept across restarts unless forgotten
}

// frontend is where the server listens now.
func (s *serverProc) frontend() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// forgetAddr lets the next start pick a free port.
func (s *serverProc) forgetAddr() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addr = ""
}

// start starts the server and waits until its frontend answers.
func (s *serverProc) start(ctx context.Context) error {
	raw, err := json.Marshal(serverChildConfig{DBPath: s.dbPath, Addr: s.frontend()})
	if err != nil {
		return err
	}
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), serverChildEnv+"="+string(raw))
	cmd.Stderr = logFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start Temporal server: %w", err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if addr, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
				ready <- addr
			}
		}
		close(ready)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case addr, ok := <-ready:
		if !ok {
			_ = cmd.Wait()
			return fmt.Errorf("Temporal server exited before it was ready (%s); see %s", cmd.ProcessState, s.logPath)
		}
		s.mu.Lock()
		s.addr, s.cmd = addr, cmd
		s.mu.Unlock()
		return nil
	case <-time.After(3 * time.Minute):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return fmt.Errorf("Temporal server not ready within 3m; see %s", s.logPath)
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return ctx.Err()
	}
}

// kill ends the server with SIGKILL: nothing is flushed, as on a crash.
func (s *serverProc) kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	_ = s.cmd.Wait()
	s.cmd = nil
}

// stop ends the server gracefully.
func (s *serverProc) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}

// proxy forwards TCP connections from its listener to target. Cut closes
// every connection and holds new ones open without forwarding anything, as
// a network that drops packets does; Heal lets new connections through.
type proxy struct {
	ln     net.Listener
	target func() string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
}

func newProxy(target func() string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go p.serve()
	return p, nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns[c] = struct{}{}
		cut := p.cut
		p.mu.Unlock()
		if cut {
			continue // held, unanswered, until the next cut or close
		}
		go p.forward(c)
	}
}

func (p *proxy) forward(c net.Conn) {
	up, err := net.DialTimeout("tcp", p.target(), 5*time.Second)
	if err != nil {
		p.drop(c)
		return
	}
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		_ = up.Close()
		p.drop(c)
		return
	}
	p.conns[up] = struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		p.drop(dst)
		p.drop(src)
	}
	go pipe(up, c)
	go pipe(c, up)
	wg.Wait()
}

func (p *proxy) drop(c net.Conn) {
	_ = c.Close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// setCut cuts (true) or heals (false) the link. Cutting, and healing,
// close every connection: the held ones are released as failures.
func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	p.cut = cut
	conns := p.conns
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	for c := range conns {
		_ = c.Close()
	}
}

func (p *proxy) close() {
	_ = p.ln.Close()
	p.setCut(true)
}
