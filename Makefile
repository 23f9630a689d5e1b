# The tests need a PostgreSQL server they may create databases on:
# TEST_DATABASE_URL, by default postgres://postgres@127.0.0.1:5432/postgres.
.PHONY: test build demo vet lint

test:
	go test -race -count=1 ./...

build:
	go build -o bin/sightline ./cmd/sightline

demo:
	go run ./cmd/sightline demo

vet:
	go vet ./...

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
