package declarative

import "testing"

// DeclarativeSQL exposes a handler's compiled SQL to the tests.
func DeclarativeSQL(t *testing.T, p *Projection, eventType string) string {
	t.Helper()
	h, ok := p.handlers[eventType]
	if !ok {
		t.Fatalf("no handler for %s", eventType)
	}
	return h.sql
}
