package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestLiveness(t *testing.T) {
	var l liveness
	get := func() (int, string) {
		rec := httptest.NewRecorder()
		l.handleLive(rec, httptest.NewRequest(http.MethodGet, "/livez", nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := get(); code != http.StatusOK {
		t.Errorf("before the monitor starts: %d %s, want 200 (startup may wait long for a podCIDR)", code, body)
	}
	l.beat(time.Now())
	if code, body := get(); code != http.StatusOK {
		t.Errorf("right after a pass: %d %s, want 200", code, body)
	}
	l.beat(time.Now().Add(-livenessStall - 5*time.Second))
	code, body := get()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"monitor_silent_for":"35s"`) {
		t.Errorf("monitor silent 35 s: %d %s, want 503 saying 35s", code, body)
	}
	if s := l.stalled(time.Now()); s < livenessStall {
		t.Errorf("stalled = %v, want > %v", s, livenessStall)
	}
}
