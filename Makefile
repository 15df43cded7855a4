# ftpgate — build, test, fuzz.
# nft and e2e tests need root (network namespaces, nftables); as another user
# they skip.

SHELL        := /bin/bash
GO           ?= go
FUZZTIME     ?= 30s
TEST_TIMEOUT ?= 45m
TESTFLAGS    ?=

.PHONY: all build deps test fuzz demo bench clean lint check-deploy

all: build

build:
	$(GO) build -o bin/ftpgate ./cmd/ftpgate

deps:
	./scripts/install-deps.sh

test: deps
	@if [ "$$(id -u)" != 0 ]; then \
		echo "make test: NOT ROOT: nftables and e2e (namespace) tests will be SKIPPED; run 'sudo make test' for the full suite"; \
	fi
	$(GO) vet ./...
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(TESTFLAGS) ./...

fuzz:
	FUZZTIME=$(FUZZTIME) GO=$(GO) ./scripts/fuzz.sh

demo: deps build
	./scripts/demo.sh

bench: deps
	GO=$(GO) ./scripts/bench.sh

check-deploy: deps
	./scripts/check-deploy.sh

lint:
	@out=$$(gofmt -l .); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin
