package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// slowTasks makes the tasks of chosen methods look long-running: govmomi's
// simulator finishes every task before answering, so a client's handling of
// running tasks (progress, timeouts, cancellation) could not be tested otherwise.
// The task really completes; its outcome is hidden behind state "running" for
// the configured time, then restored.
type slowTasks struct {
	next   http.Handler
	delays map[string]time.Duration
}

var taskRef = regexp.MustCompile(`<returnval type="Task">([^<]+)</returnval>`)

func newSlowTasks(next http.Handler, spec string) http.Handler {
	delays := map[string]time.Duration{}
	for _, part := range strings.Split(spec, ",") {
		name, ms, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(ms)
		if err != nil {
			fail("-task-delay: %q is not METHOD=MILLISECONDS", part)
		}
		delays[name] = time.Duration(n) * time.Millisecond
	}
	if len(delays) == 0 {
		return next
	}
	return &slowTasks{next: next, delays: delays}
}

func (s *slowTasks) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		s.next.ServeHTTP(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	var delay time.Duration
	for name, d := range s.delays {
		if bytes.Contains(body, []byte("<"+name+" ")) || bytes.Contains(body, []byte("<"+name+">")) {
			delay = d
		}
	}
	if delay == 0 {
		s.next.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	s.next.ServeHTTP(rec, r)
	if m := taskRef.FindSubmatch(rec.Body.Bytes()); m != nil {
		ref := types.ManagedObjectReference{Type: "Task", Value: string(m[1])}
		if task, ok := simulator.Map.Get(ref).(*simulator.Task); ok {
			// Only the state is hidden: result and error already hold the outcome,
			// and a client must not read them before the state says it is done.
			final := []types.PropertyChange{{Name: "info.state", Val: task.Info.State}}
			simulator.Map.Update(task, []types.PropertyChange{
				{Name: "info.state", Val: types.TaskInfoStateRunning},
			})
			go func() {
				time.Sleep(delay)
				simulator.Map.Update(task, final)
			}()
		}
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}
