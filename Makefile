# cellgate: `make run` to serve the demo, `make test` to run every test,
# `make check` for the fast edit loop.
GO       ?= go
BIN      := bin/cellgate
GOFLAGS  ?=
TESTFLAGS ?= -timeout 40m
CHECKFLAGS ?= -timeout 5m

.PHONY: all deps build run test check bench vet fmt-check clean

all: build

deps:
	@scripts/deps.sh
	@scripts/sandbox-setup.sh
	@scripts/npm-deps.sh
	@scripts/web-build.sh

build:
	@scripts/web-build.sh
	$(GO) build $(GOFLAGS) -o $(BIN) ./cmd/cellgate

run: deps build
	./$(BIN) serve $(ARGS)

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

test: deps fmt-check vet
	$(GO) test $(TESTFLAGS) ./...

# check: gofmt, vet and go test -short, with no deps prerequisite: no
# installs, no root. -short skips what starts real kernels, the bwrap
# sandbox, the browser or the database (it assumes `make deps` ran once).
check: fmt-check vet
	$(GO) test -short $(CHECKFLAGS) ./...

bench: deps build
	@scripts/bench.sh

clean:
	rm -rf bin
