# strata — hand-written Makefile.
#
#   make            build the library, the plugin, the CLI and the man pages
#   make check      install missing packages, build, run every test
#   make demo       install missing packages, build, run the demo
#   make bench      benchmark strata against nbdkit file and raw fio
#   make soak       a long soak: faults one at a time (SOAK_ROUNDS, SOAK_SEED)
#   make fuzz       libFuzzer on the metadata decoders and the YAML parser
#   make install    install (PREFIX, DESTDIR, PLUGINDIR honoured)
#   make SANITIZE=1 check   the same under ASan + UBSan

PREFIX    ?= /usr/local
BINDIR    ?= $(PREFIX)/bin
MANDIR    ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
UNITDIR   ?= /lib/systemd/system
PLUGINDIR ?= $(shell pkg-config --variable=plugindir nbdkit 2>/dev/null || echo $(PREFIX)/lib/nbdkit/plugins)

CC      ?= cc
PKGS    := liburing libnbd yaml-0.1 libisal
# Messages are truncated on purpose where they exceed their buffers.
WARN    := -Wall -Wextra -Wshadow -Wvla -Werror -Wno-format-truncation
CFLAGS  ?= -O2 -g
ifeq ($(SANITIZE),1)
CFLAGS  += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif
ALL_CFLAGS = -std=gnu11 -D_GNU_SOURCE -fPIC $(WARN) $(CFLAGS) \
             $(shell pkg-config --cflags $(PKGS) 2>/dev/null) -Ilib
LIBS    = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread

# A sanitizer build lives apart, so the two never mix objects.
ifeq ($(SANITIZE),1)
B := build-san
else
B := build
endif
LIB_SRCS := $(wildcard lib/*.c)
LIB_OBJS := $(LIB_SRCS:lib/%.c=$(B)/lib/%.o)
CLI_SRCS := $(wildcard daemon/*.c)
CLI_OBJS := $(CLI_SRCS:daemon/%.c=$(B)/daemon/%.o)
UNIT_SRCS := $(wildcard tests/unit/*.c)
UNIT_OBJS := $(UNIT_SRCS:tests/unit/%.c=$(B)/tests/%.o)
PODS := $(wildcard man/*.pod)
MANS := $(PODS:man/%.pod=$(B)/man/%)

LIBSTRATA := $(B)/libstrata.a
PLUGIN    := $(B)/nbdkit-strata-plugin.so
CLI       := $(B)/strata
UNIT      := $(B)/check-unit

.PHONY: all check unit e2e soak fuzz demo bench install uninstall clean deps format
all: $(LIBSTRATA) $(PLUGIN) $(CLI) $(MANS)

$(B)/lib/%.o: lib/%.c $(wildcard lib/*.h) | $(B)/lib
	$(CC) $(ALL_CFLAGS) -c $< -o $@
$(B)/daemon/%.o: daemon/%.c $(wildcard lib/*.h daemon/*.h) | $(B)/daemon
	$(CC) $(ALL_CFLAGS) -c $< -o $@
$(B)/plugins/%.o: plugins/%.c $(wildcard lib/*.h) | $(B)/plugins
	$(CC) $(ALL_CFLAGS) $(shell pkg-config --cflags nbdkit) -c $< -o $@
$(B)/tests/%.o: tests/unit/%.c $(wildcard lib/*.h tests/unit/*.h) | $(B)/tests
	$(CC) $(ALL_CFLAGS) $(shell pkg-config --cflags check) -c $< -o $@

$(LIBSTRATA): $(LIB_OBJS)
	rm -f $@ && ar rcs $@ $^
$(PLUGIN): $(B)/plugins/strata.o $(LIBSTRATA)
	$(CC) -shared $(LDFLAGS) -o $@ $< $(LIBSTRATA) $(LIBS)
$(CLI): $(CLI_OBJS) $(LIBSTRATA)
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJS) $(LIBSTRATA) $(LIBS)
$(UNIT): $(UNIT_OBJS) $(LIBSTRATA)
	$(CC) $(LDFLAGS) -o $@ $(UNIT_OBJS) $(LIBSTRATA) $(shell pkg-config --libs check) $(LIBS)

$(B)/man/%: man/%.pod | $(B)/man
	pod2man --section=$(subst .,,$(suffix $*)) --center="strata" \
	  --release="strata" --name=$(basename $*) $< $@

$(B)/lib $(B)/daemon $(B)/plugins $(B)/tests $(B)/man:
	mkdir -p $@

# Install missing Debian packages (as root), or say which are missing.
deps:
	@bash tests/install-deps.sh

unit: $(UNIT)
	$(UNIT)

# The e2e scripts find the binaries through STRATA_BUILD; under SANITIZE
# they also preload the sanitizer runtimes into nbdkit, which loads the
# instrumented plugin.
E2E_ENV = STRATA_BUILD=$(CURDIR)/$(B) $(if $(filter 1,$(SANITIZE)),STRATA_SANITIZE=1)

e2e: all
	$(E2E_ENV) bash tests/e2e/run.sh

check: deps
	$(MAKE) all $(UNIT)
	$(UNIT)
	$(E2E_ENV) bash tests/e2e/run.sh

# test-soak.sh runs one round of each fault in `make check`; this runs
# many more, in a random order (SOAK_ROUNDS=N, SOAK_SEED=S to repeat a
# run).
SOAK_ROUNDS ?= 70
SOAK_SEED ?=
ifeq ($(SOAK_SEED),)
SOAK_SEED := $(shell od -An -N2 -tu2 /dev/urandom | tr -d " ")
endif
soak: deps
	$(MAKE) all
	@echo "soak: $(SOAK_ROUNDS) rounds, SOAK_SEED=$(SOAK_SEED)"
	$(E2E_ENV) SOAK_ROUNDS=$(SOAK_ROUNDS) SOAK_SEED=$(SOAK_SEED) TESTS=test-soak.sh \
	  TEST_TIMEOUT=36000 bash tests/e2e/run.sh

# Coverage-guided fuzzing of the metadata decoders and the YAML parser
# with clang's libFuzzer, FUZZ_SECONDS each (default 60; not part of
# check).  The library is built apart, in build-fuzz.
FUZZ_SECONDS ?= 60
fuzz:
	@bash tests/install-deps.sh clang libclang-rt-14-dev
	$(MAKE) B=build-fuzz CC=clang WARN="-Wall -Wextra -Wshadow -Wvla -Werror" \
	  CFLAGS="-O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined" \
	  build-fuzz/libstrata.a
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_LIBS="$(LIBS)" bash tests/fuzz/run.sh

demo: deps
	$(MAKE) all
	bash etc/strata/demo.sh

bench: deps
	$(MAKE) all
	bash tests/bench/bench.sh

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(PLUGINDIR) \
	  $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
	  $(DESTDIR)$(SYSCONFDIR)/strata $(DESTDIR)$(UNITDIR)
	install -m 755 $(CLI) $(DESTDIR)$(BINDIR)/strata
	install -m 755 $(PLUGIN) $(DESTDIR)$(PLUGINDIR)/nbdkit-strata-plugin.so
	install -m 644 $(B)/man/strata.8 $(DESTDIR)$(MANDIR)/man8/strata.8
	install -m 644 $(B)/man/strata.yaml.5 $(DESTDIR)$(MANDIR)/man5/strata.yaml.5
	install -m 644 $(B)/man/nbdkit-strata-plugin.1 $(DESTDIR)$(MANDIR)/man1/nbdkit-strata-plugin.1
	install -m 644 etc/strata/example.yaml $(DESTDIR)$(SYSCONFDIR)/strata/example.yaml
	sed -e 's|/usr/local/bin/strata|$(BINDIR)/strata|' \
	  -e 's|/etc/strata/|$(SYSCONFDIR)/strata/|' etc/systemd/strata@.service \
	  > $(DESTDIR)$(UNITDIR)/strata@.service
	chmod 644 $(DESTDIR)$(UNITDIR)/strata@.service

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/strata $(DESTDIR)$(PLUGINDIR)/nbdkit-strata-plugin.so \
	  $(DESTDIR)$(MANDIR)/man8/strata.8 $(DESTDIR)$(MANDIR)/man5/strata.yaml.5 \
	  $(DESTDIR)$(MANDIR)/man1/nbdkit-strata-plugin.1 \
	  $(DESTDIR)$(UNITDIR)/strata@.service

format:
	clang-format -i lib/*.c lib/*.h plugins/*.c daemon/*.c tests/unit/*.c

clean:
	rm -rf build build-san build-tsan build-fuzz
