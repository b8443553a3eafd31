# Crossbook: `make run` and `make test` are the two commands a new user needs.
# Both install the Debian packages they need first (as root, idempotent).

SWIFT        ?= swift
DEB_PACKAGES := liburing-dev libnuma-dev libhiredis-dev librdkafka-dev pkg-config
# Tests run optimized: the differential test drives 1,000,000 commands through two books.
TEST_FLAGS   := -c release -Xswiftc -enable-testing

.PHONY: all deps build release test run replay bench bench-e2e bench-d1 soak clean

all: build

deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

test: deps
	$(SWIFT) build $(TEST_FLAGS) --build-tests
	$(SWIFT) test $(TEST_FLAGS) --skip-build

# The engine on its embedded default with a load process beside it; Ctrl-C stops both.
# RATE=orders/s (0: flat out), DURATION=seconds (0: until Ctrl-C).
run: release
	.build/release/crossbook host
	scripts/run.sh

# The sample order log through the books, offline: every event and the final books.
replay: release
	.build/release/crossbook replay samples/orders.csv --book --digest

# Benchmarks (ordo-one/benchmark) live in their own package under bench/.
bench: deps
	cd bench && $(SWIFT) package --allow-writing-to-package-directory benchmark

# End to end from a separate process: 100k/s, 1M/s and flat out, three rounds.
bench-e2e: release
	bench/e2e.sh 3 5

# The kill -9 durability test, 1,000 cycles instead of make test's 20.
soak: deps
	$(SWIFT) build $(TEST_FLAGS) --build-tests
	CROSSBOOK_KILL_CYCLES=$${CYCLES:-1000} $(SWIFT) test $(TEST_FLAGS) --skip-build --filter killCycles

# D1: one shard, sync durability, from a separate process, with the fdatasync floor.
bench-d1: release
	bench/d1.sh

clean:
	rm -rf .build bench/.build
