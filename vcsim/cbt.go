package main

import "net/http"

// cbt emulates Changed Block Tracking, which govmomi 0.24.2's simulator lacks.
// (Filled in by the backup work; for now it passes everything through.)
type cbt struct {
	next   http.Handler
	grain  int
	window int64
}

func newCBT(next http.Handler, grain int, window int64) *cbt {
	return &cbt{next: next, grain: grain, window: window}
}

func (c *cbt) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.next.ServeHTTP(w, r)
}
