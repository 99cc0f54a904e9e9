// Command weftctl shows a node's Weft data plane by reading the pinned BPF
// maps directly, so it works whether or not weftd is running.
//
//	weftctl tunnels   [-o table|json]   remote subnets and how they are reached
//	weftctl endpoints [-o table|json]   local pods
//	weftctl stats     [-o table|json]   per-reason packet counters
//	weftctl status    [-o table|json]   node config, attached programs, sizes
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/weftnet/weft/cmd/internal/cliargs"
)

// command is one weftctl subcommand. Nouns only read; nothing here changes
// the data plane.
type command struct {
	name    string
	summary string
	run     func(env *env, args []string) error
}

// env is what a subcommand may touch: injected so tests run it in-process.
type env struct {
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
}

var commands = []command{
	{"tunnels", "list remote subnets and the node each is tunnelled to", runTunnels},
	{"endpoints", "list local pods known to the data plane", runEndpoints},
	{"stats", "show packet counters, per reason and per remote node", runStats},
	{"status", "show node config and attached programs", runStatus},
}

// errUsage marks a command-line mistake: exit status 2.
var errUsage = errors.New("usage error")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one weftctl invocation and returns its exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{ctx: ctx, stdout: stdout, stderr: stderr}
	args = cliargs.Normalize(args, valueFlags)
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			err := c.run(e, args[1:])
			switch {
			case err == nil:
				return 0
			case errors.Is(err, pflag.ErrHelp):
				return 0
			case errors.Is(err, errUsage):
				fmt.Fprintf(stderr, "weftctl %s: %v\n", c.name, err)
				return 2
			default:
				fmt.Fprintf(stderr, "weftctl %s: %v\n", c.name, explain(err))
				return 1
			}
		}
	}
	fmt.Fprintf(stderr, "weftctl: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: weftctl <command> [flags]")
	fmt.Fprintln(w, "\nReads the pinned maps of a node's Weft data plane (works with weftd stopped).")
	fmt.Fprintln(w, "\nCommands:")
	names := make([]string, 0, len(commands))
	for _, c := range commands {
		names = append(names, c.name)
	}
	sort.Strings(names)
	for _, n := range names {
		for _, c := range commands {
			if c.name == n {
				fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
			}
		}
	}
	fmt.Fprintln(w, "\nFlags go before or after the command. Run 'weftctl help <command>' for its flags.")
}
