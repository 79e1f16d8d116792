# hutong — build, run, test, bench, lint.
# Everything the project needs is installed by these targets (rustup's cargo is the only prerequisite).

CARGO ?= cargo
ADDR ?= 127.0.0.1:7070
DATA ?= ./data

.PHONY: all build run test lint fmt bench fuzz clean

all: build

build:
	$(CARGO) build --release --workspace

run: build
	./target/release/hutong broker --listen $(ADDR) --data-dir $(DATA)

# The second build compiles the README's client example on its own, so
# hutong is built with the client feature alone (a workspace-wide build
# unifies features and would hide a client that needs the broker).
test:
	$(CARGO) build --release --workspace
	$(CARGO) build --release -p hutong-client-example
	$(CARGO) test --release --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p hutong --lib --no-default-features --features client -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: build
	./target/release/hutong-bench suite

# Fuzzing (docs/fuzzing.md): each target runs for FUZZ_SECONDS, one after
# the other. cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP=1
# lets the stable toolchain accept them. FUZZ_SANITIZER=none where ASan is
# unavailable. Stops at the first crash, which lands in fuzz/artifacts/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= frame_decoder batch_validator journal_recovery journal_open segment_index catalog_snapshot consensus_step
FUZZ_SANITIZER ?= address

fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --debug-assertions --sanitizer $(FUZZ_SANITIZER) $$t \
			fuzz/corpus/$$t fuzz/seeds/$$t $$(ls -d fuzz/regressions/$$t 2>/dev/null) -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 || exit 1; \
	done

clean:
	$(CARGO) clean
