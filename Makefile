# signalbus: PGXS build
MODULE_big = signalbus
OBJS = \
	src/signalbus.o \
	src/guc.o \
	src/shmem.o \
	src/trigger.o \
	src/xact.o \
	src/launcher.o \
	src/worker.o \
	src/register.o \
	src/flush.o \
	src/message.o \
	src/amqp.o \
	src/retry.o
PGFILEDESC = "signalbus - transactional outbox publishing to AMQP"

EXTENSION = signalbus
DATA = signalbus--0.1.0.sql

REGRESS = register views errors schema
TAP_TESTS = 1

PG_CPPFLAGS = -I$(srcdir)/src
SHLIB_LINK = -lrabbitmq -lssl -lcrypto

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# The command-line client is a PROGRAM, so it has its own PGXS Makefile in
# cli/; make, make install, make uninstall and make clean recurse into it.
all: cli-all
install: cli-install
uninstall: cli-uninstall
clean: cli-clean

.PHONY: cli-all cli-install cli-uninstall cli-clean
cli-all cli-install cli-uninstall cli-clean:
	$(MAKE) -C cli $(patsubst cli-%,%,$@) PG_CONFIG='$(PG_CONFIG)'
