package metrics

import (
	"strings"
	"testing"
	"time"
)

func TestWritePrometheus(t *testing.T) {
	var m Metrics
	m.StoreErrors.Add(3)
	m.InvalidLeases.Store(2)
	m.ObserveReconcile(1500*time.Microsecond, 42, 1)

	var b strings.Builder
	if err := m.WritePrometheus(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"# TYPE weft_store_errors_total counter\nweft_store_errors_total 3\n",
		"# TYPE weft_invalid_leases gauge\nweft_invalid_leases 2\n",
		"weft_reconcile_runs_total 1\n",
		"weft_reconcile_errors_total 1\n",
		"weft_reconcile_last_duration_seconds 0.0015\n",
		"weft_tunnels 42\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	// Every sample line is "name value" preceded by its HELP and TYPE.
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines)%3 != 0 {
		t.Fatalf("%d lines", len(lines))
	}
	for i := 0; i < len(lines); i += 3 {
		name := strings.Fields(lines[i+2])[0]
		if !strings.HasPrefix(lines[i], "# HELP "+name+" ") || !strings.HasPrefix(lines[i+1], "# TYPE "+name+" ") {
			t.Errorf("bad block %q", lines[i:i+3])
		}
	}
}
