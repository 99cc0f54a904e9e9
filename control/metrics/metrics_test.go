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
	// The histograms, with the run just observed.
	for _, want := range []string{
		"# TYPE weft_reconcile_duration_seconds histogram\n",
		"weft_reconcile_duration_seconds_count 1\n",
		"weft_reconcile_duration_seconds_bucket{le=\"0.0016\"} 1\n",
		"# TYPE weft_join_to_forwarding_seconds histogram\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	// Every sample is preceded by its HELP and TYPE.
	for _, line := range strings.Split(out, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '{' })[0]
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
		if !strings.Contains(out, "# HELP "+base+" ") || !strings.Contains(out, "# TYPE "+base+" ") {
			t.Errorf("no HELP/TYPE for %s", name)
		}
	}
}
