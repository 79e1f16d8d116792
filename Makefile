# hutong — build, run, test, bench, lint.
# Everything the project needs is installed by these targets (rustup's cargo is the only prerequisite).

CARGO ?= cargo
ADDR ?= 127.0.0.1:7070
DATA ?= ./data

.PHONY: all build run test lint fmt bench clean

all: build

build:
	$(CARGO) build --release --workspace

run: build
	./target/release/hutong broker --listen $(ADDR) --data-dir $(DATA)

test:
	$(CARGO) build --release --workspace
	$(CARGO) test --release --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: build
	./target/release/hutong-bench suite

clean:
	$(CARGO) clean
