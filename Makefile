# ivshim build. Every target depends on deps, so a fresh Debian 12 machine (as root) needs
# nothing installed by hand: `make demo`, `make test`, `make bench`.
SHELL := /bin/bash
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BUILD := build
export PATH := $(dir $(GO)):$(PATH)

# Debian packages the project needs (build, tests, demo, benchmarks).
APT_PACKAGES := openmpi-bin libopenmpi-dev mpich libmpich-dev libvirt-dev pkg-config \
	iproute2 util-linux procps busybox spin gnuplot-nox \
	libvirt-daemon-system libvirt-daemon-system-sysv qemu-system-x86 tiny-initramfs xz-utils
# A guest kernel for the real libvirt/QEMU test (tests/libvirtreal); any installed one will do.
KERNEL_PACKAGE := linux-image-cloud-amd64

# Each fuzz target's budget is a count of inputs, not a duration: Go 1.26's fuzz coordinator can
# fail a duration-limited run with a bare "context deadline exceeded" when the deadline races a
# worker's last input (golang/go#75804, fixed in Go 1.27), with no failing input found.
FUZZTIME ?= 10000x
TEST_TIMEOUT ?= 40m
FAIL_LINES ?= 600

C_PROGRAMS := $(foreach mpi,openmpi mpich,$(BUILD)/bench/ivbench-$(mpi) $(BUILD)/mpi/hello_ring-$(mpi))
SHIM_LIBS := $(BUILD)/lib/libivshim-openmpi.so $(BUILD)/lib/libivshim-mpich.so $(BUILD)/lib/libivshim-ctl.so

# The front library is compiled against each MPI family's mpi.h but links no MPI library: it is
# preloaded into processes without one too (see cgo/front/abi.h), so PMPI_* bind lazily.
FRONT_SRC := $(wildcard cgo/front/*.c)
FRONT_DEPS := $(FRONT_SRC) $(wildcard cgo/front/*.h) cgo/front/exports.map $(wildcard ivshmem/*.h) cgo/ctl/ivshim_ctl.h
FRONT_CFLAGS := -O2 -g -fPIC -shared -std=gnu11 -Wall -Wextra -Werror -Iivshmem -Icgo/ctl \
	-Wl,-z,lazy -Wl,--version-script=cgo/front/exports.map

# The front library once more with AddressSanitizer and UndefinedBehaviorSanitizer, for
# tests/sanitize (run by make test): build/asan/lib/libivshim-{openmpi,mpich}.so. A rank preloads
# the ASan runtime first, then this library; the control plane stays build/lib/libivshim-ctl.so.
ASAN_LIBS := $(BUILD)/asan/lib/libivshim-openmpi.so $(BUILD)/asan/lib/libivshim-mpich.so
SANITIZE_CFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer -O1 -g
MPI_PKG_openmpi := ompi-c
MPI_PKG_mpich := mpich

.PHONY: all deps build asan test demo vm-demo bench clean
all: build

# Idempotent: installs only what is missing, then fetches the Go modules go.sum pins.
deps: $(BUILD)/.deps
$(BUILD)/.deps: Makefile go.mod go.sum
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	ls /boot/vmlinuz-* >/dev/null 2>&1 || missing="$$missing $(KERNEL_PACKAGE)"; \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		if [ $$(id -u) -ne 0 ]; then echo "make deps: need root to apt-get install $$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	$(GO) mod download
	@mkdir -p $(BUILD) && touch $@

build: deps $(C_PROGRAMS) $(SHIM_LIBS) $(ASAN_LIBS)
	$(GO) build -o $(BUILD)/ ./tests/cmd/... ./broker/cmd/...

$(BUILD)/lib/libivshim-openmpi.so: $(FRONT_DEPS) | deps
	@mkdir -p $(dir $@)
	gcc $(FRONT_CFLAGS) $$(pkg-config --cflags ompi-c) -o $@ $(FRONT_SRC) -ldl

$(BUILD)/lib/libivshim-mpich.so: $(FRONT_DEPS) | deps
	@mkdir -p $(dir $@)
	gcc $(FRONT_CFLAGS) $$(pkg-config --cflags mpich) -o $@ $(FRONT_SRC) -ldl

asan: $(ASAN_LIBS)

$(BUILD)/asan/lib/libivshim-%.so: $(FRONT_DEPS) | deps
	@mkdir -p $(dir $@)
	gcc $(filter-out -O2,$(FRONT_CFLAGS)) $(SANITIZE_CFLAGS) $$(pkg-config --cflags $(MPI_PKG_$*)) \
		-o $@ $(FRONT_SRC) -ldl

# The Go control plane, loaded by the front library inside MPI_Init only.
.PHONY: $(BUILD)/lib/libivshim-ctl.so
$(BUILD)/lib/libivshim-ctl.so: | deps
	@mkdir -p $(dir $@)
	$(GO) build -buildmode=c-shared -o $@ ./cgo/ctl
	@rm -f $(BUILD)/lib/libivshim-ctl.h

$(BUILD)/bench/ivbench-%: tests/bench/ivbench.c | deps
	@mkdir -p $(dir $@)
	mpicc.$* -O2 -Wall -Wextra -o $@ $<

$(BUILD)/mpi/%-openmpi: tests/mpi/%.c | deps
	@mkdir -p $(dir $@)
	mpicc.openmpi -O2 -Wall -Wextra -o $@ $<

$(BUILD)/mpi/%-mpich: tests/mpi/%.c | deps
	@mkdir -p $(dir $@)
	mpicc.mpich -O2 -Wall -Wextra -o $@ $<

# Unit and integration tests, one package at a time (the MPI suites need both cores), then
# every fuzz target briefly (found with grep: listing them with go test -list links every
# package's test binary once more). Prints each skipped test with its reason so CI shows what did not
# run.
test: build
	@set -o pipefail; status=0; \
	$(GO) test -p 1 -count=1 -timeout $(TEST_TIMEOUT) -v ./... 2>&1 | tee $(BUILD)/test.log \
		| grep -E --line-buffered '^(--- |ok |FAIL|panic:|\s+\S+_test\.go:[0-9]+: )' || status=1; \
	if [ $$status != 0 ]; then \
		echo "== the last $(FAIL_LINES) lines of each failing package's output (all of it: $(BUILD)/test.log)"; \
		awk -v n=$(FAIL_LINES) '{ buf[NR % n] = $$0; cnt++ } \
			/^(FAIL|ok)[ \t]+[^ \t]+/ { if ($$1 == "FAIL") for (i = (cnt > n ? NR - n + 1 : NR - cnt + 1); i <= NR; i++) print buf[i % n]; cnt = 0 }' \
			$(BUILD)/test.log; \
	fi; \
	echo "== skipped tests (reason on the next line):"; \
	grep -A1 -E '^\s*--- SKIP' $(BUILD)/test.log || echo "   none"; \
	for pkg in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
		for f in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$pkg/*_test.go); do \
			echo "== fuzz $$pkg $$f for $(FUZZTIME)"; \
			if $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg > $(BUILD)/fuzz.log 2>&1; \
			then tail -3 $(BUILD)/fuzz.log; else cat $(BUILD)/fuzz.log; status=1; fi; \
		done; \
	done; \
	exit $$status

demo: build
	$(BUILD)/ivshim-cluster demo

# MPI jobs of both MPIs in real QEMU guests (TCG) on two private libvirt hosts, each with its
# broker; everything it starts is torn down when it ends (README, "Real guests").
vm-demo: build
	$(GO) test -count=1 -timeout 20m -run '^TestLibvirtMPIJob$$' -v ./tests/libvirtreal/

clean:
	rm -rf $(BUILD)

# Shim vs. the library's own shared memory (native) and its TCP path (network) on the emulated
# cluster, both MPIs, 2 and 4 ranks plus 2 hosts x 2 VMs; tables, ratios and plots in build/bench.
bench: build
	$(BUILD)/ivshim-bench -out $(BUILD)/bench -lib $(BUILD)/lib
