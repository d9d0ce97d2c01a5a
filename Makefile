# drover build. `make` builds bin/drover; `make check` installs what is
# missing, builds the release and the ASan+UBSan binaries, and runs every test.
.DEFAULT_GOAL := all
SHELL := /bin/bash
# `make V=1` shows full command lines.
ifeq ($(V),1)
Q :=
else
Q := @
endif

CC ?= cc
ifeq ($(origin CC),default)
CC := cc
endif
PKGS := libuv jansson sqlite3 libcurl msgpack openssl libarchive ldns
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lhttp_parser -lpthread -lm

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter
BASE_CFLAGS := -std=c17 -D_GNU_SOURCE -Isrc -Iinclude $(WARN) -MMD -MP
REL_CFLAGS := -O2 -g
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
ASAN_CFLAGS := -O1 -g $(SAN_FLAGS)

# src/shim is the per-instance monitor, its own tiny binary (libc only).
SRC := $(shell find src -name '*.c' -not -path 'src/shim/*' | sort)
SHIM_SRC := $(wildcard src/shim/*.c)
LIB_SRC := $(filter-out src/main.c,$(SRC))
UNIT_SRC := $(shell find tests/unit -name 'test_*.c' 2>/dev/null | sort)

REL_OBJ := $(patsubst %.c,build/rel/%.o,$(SRC))
ASAN_OBJ := $(patsubst %.c,build/asan/%.o,$(SRC))
ASAN_LIB_OBJ := $(patsubst %.c,build/asan/%.o,$(LIB_SRC))
UNIT_BIN := $(patsubst %.c,build/asan/%,$(UNIT_SRC))

# A unit test in tests/unit/<module>/ links src/core and src/<module>, plus
# the modules named in TEST_DEPS_<module>, so one module's tests never wait
# on another module's half-written code.
TEST_DEPS_http :=
TEST_DEPS_store :=
TEST_DEPS_spec :=
TEST_DEPS_api := store spec http sched
TEST_DEPS_isolate :=
TEST_DEPS_agent := isolate http spec locator engine
TEST_DEPS_engine := isolate
TEST_DEPS_sched := store spec
TEST_DEPS_cli := http
TEST_DEPS_gateway := locator http spec

# ---- worker SDK (include/drover/worker.h, lib/worker/) and its examples ----
# (owned by the SDK work; keep other rules out of this block)
# The SDK is a public library: it sees include/ and its own lib/worker/
# headers only (no -Isrc), links libc and libmsgpackc, nothing else.
SDK_SRC := $(sort $(wildcard lib/worker/*.c))
SDK_CFLAGS := -std=c17 -D_GNU_SOURCE -Iinclude -Ilib/worker $(WARN) -MMD -MP \
	$(shell pkg-config --cflags msgpack 2>/dev/null)
SDK_LIBS := $(shell pkg-config --libs msgpack 2>/dev/null || echo -lmsgpackc)
SDK_REL_OBJ := $(patsubst lib/worker/%.c,build/sdk/rel/%.o,$(SDK_SRC))
SDK_ASAN_OBJ := $(patsubst lib/worker/%.c,build/sdk/asan/%.o,$(SDK_SRC))
SDK_LIB := build/lib/libdrover-worker.a
SDK_ASAN_LIB := build/lib/asan/libdrover-worker.a
SDK_EXAMPLES := echo http
SDK_EXAMPLE_BIN := $(patsubst %,bin/examples/%-worker,$(SDK_EXAMPLES))
SDK_ASAN_EXAMPLE_BIN := $(patsubst %,build/asan/examples/%-worker,$(SDK_EXAMPLES))
SDK_TEST_SRC := $(sort $(wildcard tests/unit/sdk/test_*.c))
SDK_TEST_BIN := $(patsubst tests/unit/sdk/%.c,build/asan/tests/unit/sdk/%,$(SDK_TEST_SRC))
# SDK_ALL: what `make check` and `make demo` build besides the drover binaries.
SDK_ALL := $(SDK_LIB) $(SDK_ASAN_LIB) $(SDK_EXAMPLE_BIN) $(SDK_ASAN_EXAMPLE_BIN) $(SDK_TEST_BIN)

.PHONY: sdk
sdk: $(SDK_ALL)

build/sdk/rel/%.o: lib/worker/%.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(SDK_CFLAGS) -O2 -g -c -o $@ $<

build/sdk/asan/%.o: lib/worker/%.c
	@mkdir -p $(dir $@)
	@echo "  CC      $< (asan)"
	$(Q)$(CC) $(SDK_CFLAGS) $(ASAN_CFLAGS) -c -o $@ $<

$(SDK_LIB): $(SDK_REL_OBJ)
	@mkdir -p $(dir $@)
	@echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(SDK_ASAN_LIB): $(SDK_ASAN_OBJ)
	@mkdir -p $(dir $@)
	@echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

# examples/workers/<name>-c/main.c -> bin/examples/<name>-worker (release)
# and build/asan/examples/<name>-worker (the integration tests prefer it).
$(SDK_EXAMPLE_BIN): bin/examples/%-worker: examples/workers/%-c/main.c $(SDK_LIB)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(SDK_CFLAGS) -O2 -g -o $@ $< $(SDK_LIB) $(SDK_LIBS)

$(SDK_ASAN_EXAMPLE_BIN): build/asan/examples/%-worker: examples/workers/%-c/main.c $(SDK_ASAN_LIB)
	@mkdir -p $(dir $@)
	@echo "  LD      $@ (asan)"
	$(Q)$(CC) $(SDK_CFLAGS) $(ASAN_CFLAGS) -o $@ $< $(SDK_ASAN_LIB) $(SDK_LIBS)

# Static pattern rule: it beats the generic build/asan/tests/unit/% rule,
# which would link src/core instead of the SDK.
$(SDK_TEST_BIN): build/asan/tests/unit/sdk/%: tests/unit/sdk/%.c $(SDK_ASAN_LIB)
	@mkdir -p $(dir $@)
	@echo "  TEST    $@"
	$(Q)$(CC) $(SDK_CFLAGS) $(ASAN_CFLAGS) -Itests/unit -o $@ $< $(SDK_ASAN_LIB) $(SDK_LIBS) -lcmocka

# The HTTP request decoder's fuzz target links the SDK, not src/.
build/fuzz/fuzz_sdk_http: fuzz/fuzz_sdk_http.c $(SDK_SRC)
	@mkdir -p $(dir $@)
	@echo "  FUZZ    $@"
	$(Q)clang -std=c17 -D_GNU_SOURCE -Iinclude -Ilib/worker -g -O1 \
	  -fsanitize=fuzzer,address,undefined -o $@ $^ $(SDK_LIBS)

-include $(SDK_REL_OBJ:.o=.d) $(SDK_ASAN_OBJ:.o=.d) $(SDK_TEST_BIN:=.d) \
	$(SDK_EXAMPLE_BIN:=.d) $(SDK_ASAN_EXAMPLE_BIN:=.d)
# ---- end of worker SDK block ----
mod_objs = $(filter build/asan/src/core/% $(foreach m,$(1) $(TEST_DEPS_$(1)),build/asan/src/$(m)/%),$(ASAN_LIB_OBJ))

.PHONY: all asan unit check test deps demo lint format fuzz bench clean integration

all: bin/drover bin/drover-shim

bin/drover: $(REL_OBJ)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(REL_CFLAGS) -o $@ $^ $(PKG_LIBS)

build/rel/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(BASE_CFLAGS) $(REL_CFLAGS) $(PKG_CFLAGS) -c -o $@ $<

asan: build/asan/drover build/asan/drover-shim $(UNIT_BIN)

# The shim stays small: no libraries but libc, so each instance's monitor
# costs little memory.
bin/drover-shim: $(SHIM_SRC)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) -std=c17 -D_GNU_SOURCE $(WARN) -Os -o $@ $^

build/asan/drover-shim: $(SHIM_SRC)
	@mkdir -p $(dir $@)
	@echo "  LD      $@ (asan)"
	$(Q)$(CC) -std=c17 -D_GNU_SOURCE $(WARN) $(ASAN_CFLAGS) -o $@ $^

build/asan/drover: $(ASAN_OBJ)
	@echo "  LD      $@"
	$(Q)$(CC) $(ASAN_CFLAGS) -o $@ $^ $(PKG_LIBS)

build/asan/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $< (asan)"
	$(Q)$(CC) $(BASE_CFLAGS) $(ASAN_CFLAGS) $(PKG_CFLAGS) -c -o $@ $<

.SECONDEXPANSION:
build/asan/tests/unit/%: tests/unit/%.c $$(call mod_objs,$$(word 1,$$(subst /, ,$$*)))
	@mkdir -p $(dir $@)
	@echo "  TEST    $@"
	$(Q)$(CC) $(BASE_CFLAGS) $(ASAN_CFLAGS) $(PKG_CFLAGS) -Itests/unit -o $@ $^ $(PKG_LIBS) -lcmocka

deps:
	@scripts/deps.sh

unit: $(UNIT_BIN)
	@tests/run.sh unit

integration: bin/drover build/asan/drover
	@tests/run.sh integration

# The one command CI runs: install, build both flavours, every test, one
# closing line "N passed, N failed".
check: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all asan fuzz-build $(SDK_ALL)
	@tests/run.sh all

test: check

demo: deps
	@$(MAKE) --no-print-directory -j$$(nproc) all
	@scripts/demo.sh

lint:
	@scripts/lint.sh

format:
	@clang-format -i $$(find src tests/unit fuzz include bench -name '*.[ch]' 2>/dev/null)

FUZZ_SRC := $(wildcard fuzz/fuzz_*.c)
FUZZ_BIN := $(patsubst fuzz/%.c,build/fuzz/%,$(FUZZ_SRC))
FUZZ_FLAGS := -std=c17 -D_GNU_SOURCE -Isrc -Iinclude -g -O1 -fsanitize=fuzzer,address,undefined
# Fuzz targets link src/core plus the module named after the first word of
# the target (fuzz_http_request.c -> src/http) and the modules in
# FUZZ_DEPS_<module> (the cli targets stub what they call instead).
FUZZ_DEPS_agent := isolate http spec locator engine
FUZZ_DEPS_gateway := locator http spec
fuzz_mod = $(word 2,$(subst _, ,$(1)))
fuzz-build: $(FUZZ_BIN)
build/fuzz/%: fuzz/%.c $$(filter-out src/main.c,$$(wildcard src/core/*.c $$(foreach m,$$(call fuzz_mod,$$*) $$(FUZZ_DEPS_$$(call fuzz_mod,$$*)),src/$$(m)/*.c)))
	@mkdir -p $(dir $@)
	@echo "  FUZZ    $@"
	$(Q)clang $(FUZZ_FLAGS) $(PKG_CFLAGS) -o $@ $^ $(PKG_LIBS)

fuzz: fuzz-build
	@for f in $(FUZZ_BIN); do n=$$(basename $$f); echo "fuzzing $$n for $${FUZZ_SECONDS:-60}s"; \
	  mkdir -p build/fuzz-new/$$n fuzz/corpus/$$n; \
	  $$f -max_total_time=$${FUZZ_SECONDS:-60} -artifact_prefix=build/fuzz-new/$$n- \
	    build/fuzz-new/$$n fuzz/corpus/$$n || exit 1; done
	@echo "new inputs are in build/fuzz-new/ (the seed corpora in fuzz/corpus/ are left as they are)"

bench: all
	@bench/run.sh

clean:
	rm -rf build bin

-include $(REL_OBJ:.o=.d) $(ASAN_OBJ:.o=.d) $(UNIT_BIN:=.d)
