package topo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Commands run through nsenter with only the network namespace switched.
// `ip netns exec` would also remount /sys in a private mount namespace and
// hide the host's bpffs (design.md, "Known traps").
func nsenterArgs(nsPath, name string, args []string) []string {
	return append([]string{"--net=" + nsPath, "--", name}, args...)
}

// execIn runs a command to completion in the namespace at nsPath and returns
// its combined output; a failure's error carries that output.
func execIn(ctx context.Context, nsPath, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "nsenter", nsenterArgs(nsPath, name, args)...)
	// A grandchild holding the output pipe must not make us hang forever
	// once the command itself is done or cancelled.
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("run %q in %s: %w: %s", strings.Join(append([]string{name}, args...), " "),
			filepath.Base(nsPath), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// proc is a long-running process the lab started and will kill on Close.
type proc struct {
	cmd     *exec.Cmd
	nsPath  string
	logPath string
	done    chan struct{} // closed once the lab has reaped the process
	err     error         // cmd.Wait's result, valid after done
}

// start launches a long-running command in the namespace at nsPath. owner
// names the log file. The lab reaps the process itself (see Lab.Wait).
func (l *Lab) start(nsPath, owner, name string, args ...string) (*exec.Cmd, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("start process: lab is closed")
	}
	l.seq++
	logPath := filepath.Join(l.LogDir, fmt.Sprintf("%s-%s-%d.log", owner, filepath.Base(name), l.seq))
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open process log: %w", err)
	}
	defer f.Close() // the child has its own copy after Start

	cmd := exec.Command("nsenter", nsenterArgs(nsPath, name, args)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true, // so Close can kill the command's own children too
		// If the test binary dies (timeout panic, crash) take the child along.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, filepath.Base(nsPath), err)
	}
	p := &proc{cmd: cmd, nsPath: nsPath, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	l.procs[cmd] = p
	return cmd, nil
}

func (l *Lab) proc(cmd *exec.Cmd) (*proc, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p, ok := l.procs[cmd]
	if !ok {
		return nil, errors.New("process was not started by this lab")
	}
	return p, nil
}

// Wait waits for a process started with Start and returns its exit error.
// The lab reaps its processes itself, so callers must use Wait (or Exited)
// instead of cmd.Wait.
func (l *Lab) Wait(cmd *exec.Cmd) error {
	p, err := l.proc(cmd)
	if err != nil {
		return err
	}
	<-p.done
	return p.err
}

// Exited returns a channel closed once the process has exited and been reaped.
func (l *Lab) Exited(cmd *exec.Cmd) <-chan struct{} {
	p, err := l.proc(cmd)
	if err != nil {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return p.done
}

// LogPath returns the file that receives the process's stdout and stderr.
func (l *Lab) LogPath(cmd *exec.Cmd) string {
	p, err := l.proc(cmd)
	if err != nil {
		return ""
	}
	return p.logPath
}

// Stop kills the process and its process group with SIGKILL and waits for it.
// For a graceful stop, signal cmd.Process yourself and then call Wait.
func (l *Lab) Stop(cmd *exec.Cmd) error {
	p, err := l.proc(cmd)
	if err != nil {
		return err
	}
	p.kill()
	return p.wait(5 * time.Second)
}

// kill signals the whole process group, but only while the leader is still
// unreaped: after that its pid (the group id) may be reused.
func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
}

func (p *proc) wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("process %d did not exit within %v after SIGKILL", p.cmd.Process.Pid, timeout)
	}
}

// stopProcs kills and reaps every tracked process in the namespace at nsPath
// ("" means all).
func (l *Lab) stopProcs(nsPath string) error {
	l.mu.Lock()
	var ps []*proc
	for _, p := range l.procs {
		if nsPath == "" || p.nsPath == nsPath {
			ps = append(ps, p)
		}
	}
	l.mu.Unlock()
	for _, p := range ps {
		p.kill()
	}
	var errs []error
	for _, p := range ps {
		errs = append(errs, p.wait(5*time.Second))
	}
	return errors.Join(errs...)
}
