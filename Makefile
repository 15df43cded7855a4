# ftpgate — build, test, fuzz.
#
# As root, `make test` runs every test and installs missing Debian packages
# first. As another user, missing packages are only listed (with the command
# that installs them) and the nftables and e2e (namespace) tests skip.
#
# Go: the go command in PATH, with /usr/local/go/bin (where the go.dev
# release unpacks) put first when it exists; GO=/path/to/go picks another.
# sudo resets PATH (Debian's secure_path): for a go elsewhere, keep yours:
#   sudo env PATH="$PATH" make test
# nft, vsftpd, sysctl and conntrack live in /usr/sbin and /sbin, which a
# user's PATH (kept that way) lacks on Debian: appended here.

SHELL        := /bin/bash
export PATH  := $(PATH):/usr/sbin:/sbin
ifneq ($(wildcard /usr/local/go/bin/go),)
export PATH  := /usr/local/go/bin:$(PATH)
endif
GO           ?= go
export GO
FUZZTIME     ?= 30s
TEST_TIMEOUT ?= 45m
TESTFLAGS    ?=

.PHONY: all build deps deps-test deps-demo deps-deploy test fuzz demo bench clean lint check-deploy

all: build

build:
	$(GO) build -o bin/ftpgate ./cmd/ftpgate

# deps: everything any target needs; the others install only their own
# (make demo does not need check-deploy's prometheus or systemd).
deps:
	./scripts/install-deps.sh all

deps-test deps-demo deps-deploy:
	./scripts/install-deps.sh $(@:deps-%=%)

test: deps-test
	@if [ "$$(id -u)" != 0 ]; then \
		echo 'make test: NOT ROOT: nftables and e2e (namespace) tests will be SKIPPED; for the full suite: sudo env PATH="$$PATH" make test'; \
	fi
	$(GO) vet ./...
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(TESTFLAGS) ./...

fuzz:
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

demo: deps-demo build
	./scripts/demo.sh

bench: deps-test
	./scripts/bench.sh

check-deploy: deps-deploy
	./scripts/check-deploy.sh

lint:
	@out=$$(gofmt -l .); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin
