# The tests need a PostgreSQL server they may create databases on:
# TEST_DATABASE_URL, by default postgres://postgres@127.0.0.1:5432/postgres.
.PHONY: test fuzz drill build demo vet lint bench microbench

# test runs every test, then a short fuzzing run of the example
# projections' event decoding and of the SQL lexer, then the drills, alone,
# last: the PostgreSQL restart drill, which restarts the server the other
# tests use, and the failover drill (three processes killed twenty times,
# on each source), which needs many connections.
test:
	go test -race -count=1 ./...
	$(MAKE) fuzz drill

# fuzz runs a count of inputs, not a time: with a time, Go before 1.27 may
# fail the run as it ends ("context deadline exceeded", golang/go#75804).
fuzz:
	go test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 50000x ./readmodel/
	go test -run '^$$' -fuzz '^FuzzScan$$' -fuzztime 200000x ./internal/pgsql/

drill:
	go test -race -count=1 -p 1 -tags pgrestart -run '^(TestPostgresRestartUnderLoad|TestAcknowledgedAppendsSurviveACrash)$$' ./readmodel/ ./eventstore/pgstore/
	go test -race -count=1 -tags drill -run '^TestDrill' ./cmd/sightline/

build:
	go build -o bin/sightline ./cmd/sightline

# bench measures sightline against its references on this machine (a few
# minutes; the first run seeds a database of 1 million events, kept for the
# next runs). BENCH_FLAGS passes flags, e.g. BENCH_FLAGS='--events 5000000'.
# bench/ is a module of its own, so that the load generator and the other
# modules only it needs are not the library's dependencies.
bench:
	cd bench && go run . $(BENCH_FLAGS)

# microbench runs the engine's hot-path micro-benchmarks.
microbench:
	go test -run '^$$' -bench . -benchmem ./projections/ ./readmodel/

demo:
	go run ./cmd/sightline demo

vet:
	go vet ./...
	go vet -tags pgrestart ./readmodel/ ./eventstore/pgstore/
	go vet -tags drill ./cmd/sightline/
	cd bench && go vet ./...

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
