/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Shared memory of signalbus: one slot per database named in
 *		signalbus.databases, holding that database's commit queue and its
 *		worker's status.
 *
 * Locking: each slot has its own LWLock (tranche "signalbus"), which
 * protects every field of the slot and its queue.  Committing backends take
 * it exclusively for the time of a memcpy into the ring; the worker takes it
 * to pop entries and to update its status; readers of signalbus_status take
 * it shared.  Nothing is allocated, and nothing can fail, while a slot lock
 * is held.  dbname, lock and entries never change after startup.
 *
 *-------------------------------------------------------------------------
 */
#include "signalbus.h"

#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

SbShared   *sb_shared = NULL;
int			sb_nconfigured = 0;
char	  **sb_configured_dbs = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
sb_shmem_size(void)
{
	Size		size;

	size = add_size(offsetof(SbShared, slots),
					mul_size(sizeof(SbSlot), sb_nconfigured));
	size = MAXALIGN(size);
	size = add_size(size, mul_size(mul_size(sizeof(SbQueueEntry),
											signalbus_queue_size),
								   sb_nconfigured));
	return size;
}

static void
sb_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(sb_shmem_size());
	RequestNamedLWLockTranche("signalbus", Max(sb_nconfigured, 1));
}

static void
sb_shmem_startup(void)
{
	bool		found;
	int			i;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	sb_shared = ShmemInitStruct("signalbus", sb_shmem_size(), &found);
	if (!found)
	{
		LWLockPadded *locks = GetNamedLWLockTranche("signalbus");
		SbQueueEntry *entries;

		sb_shared->nslots = sb_nconfigured;
		sb_shared->capacity = signalbus_queue_size;
		entries = (SbQueueEntry *) ((char *) sb_shared +
									MAXALIGN(offsetof(SbShared, slots) +
											 sizeof(SbSlot) * sb_nconfigured));
		for (i = 0; i < sb_nconfigured; i++)
		{
			SbSlot	   *slot = &sb_shared->slots[i];

			memset(slot, 0, sizeof(SbSlot));
			slot->lock = &locks[i].lock;
			strlcpy(slot->dbname, sb_configured_dbs[i], NAMEDATALEN);
			slot->dboid = InvalidOid;
			slot->state = SB_STATE_STOPPED;
			slot->entries = entries + (Size) i * signalbus_queue_size;
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * sb_shmem_init: parse signalbus.databases (fixed for the postmaster's
 * lifetime) and install the shared memory hooks.
 */
void
sb_shmem_init(void)
{
	char	   *raw = pstrdup(signalbus_databases ? signalbus_databases : "");
	List	   *names = NIL;
	ListCell   *lc;
	int			n = 0;

	if (!SplitGUCList(raw, ',', &names))
		ereport(FATAL,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid list syntax in parameter \"%s\"",
						"signalbus.databases")));

	sb_configured_dbs = palloc0(sizeof(char *) * Max(list_length(names), 1));
	foreach(lc, names)
	{
		char	   *name = (char *) lfirst(lc);
		bool		dup = false;
		int			i;

		if (name[0] == '\0')
			continue;
		if (strlen(name) >= NAMEDATALEN)
			ereport(FATAL,
					(errcode(ERRCODE_NAME_TOO_LONG),
					 errmsg("database name \"%s\" in \"%s\" is too long",
							name, "signalbus.databases")));
		for (i = 0; i < n; i++)
			if (strcmp(sb_configured_dbs[i], name) == 0)
				dup = true;
		if (!dup)
			sb_configured_dbs[n++] = pstrdup(name);
	}
	sb_nconfigured = n;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = sb_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = sb_shmem_startup;
}

/*
 * sb_require_shmem: error out, as pg_stat_statements does, when a feature
 * needs the shared memory that only shared_preload_libraries provides.
 */
void
sb_require_shmem(void)
{
	if (sb_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("signalbus must be loaded via shared_preload_libraries")));
}

/*
 * sb_slot_for_database: the slot whose worker currently serves dboid, or
 * NULL.  A database without a running worker gets nothing queued: its rows
 * wait for a sweep or an explicit flush.
 */
SbSlot *
sb_slot_for_database(Oid dboid)
{
	int			i;

	if (sb_shared == NULL)
		return NULL;
	for (i = 0; i < sb_shared->nslots; i++)
	{
		SbSlot	   *slot = &sb_shared->slots[i];

		/* dboid is an aligned 4-byte field: reading it unlocked is atomic */
		if (slot->dboid == dboid && OidIsValid(dboid))
			return slot;
	}
	return NULL;
}

/*
 * sb_queue_pop: move up to max queued rows into buf; returns how many.
 */
int
sb_queue_pop(SbSlot *slot, SbQueueEntry *buf, int max)
{
	int			n = 0;
	uint64		cap = sb_shared->capacity;

	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	while (n < max && slot->tail < slot->head)
	{
		buf[n++] = slot->entries[slot->tail % cap];
		slot->tail++;
	}
	LWLockRelease(slot->lock);
	return n;
}

bool
sb_queue_is_empty(SbSlot *slot)
{
	bool		empty;

	LWLockAcquire(slot->lock, LW_SHARED);
	empty = (slot->tail == slot->head) && !slot->sweep_all && slot->nsweep == 0;
	LWLockRelease(slot->lock);
	return empty;
}

/*
 * sb_slot_mark_sweep: ask the worker to sweep relid.  The caller holds the
 * slot's lock; nothing here can fail.
 */
void
sb_slot_mark_sweep(SbSlot *slot, Oid relid)
{
	int			i;

	if (slot->sweep_all)
		return;
	for (i = 0; i < slot->nsweep; i++)
		if (slot->sweep_relids[i] == relid)
			return;
	if (slot->nsweep < SB_SWEEP_RELIDS)
		slot->sweep_relids[slot->nsweep++] = relid;
	else
		slot->sweep_all = true;
}

void
sb_slot_request_sweep(SbSlot *slot, Oid relid)
{
	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	sb_slot_mark_sweep(slot, relid);
	LWLockRelease(slot->lock);
}

/*
 * sb_slot_take_sweep: fetch and clear the sweep requests left by commits
 * whose rows did not fit in the queue.
 */
bool
sb_slot_take_sweep(SbSlot *slot, bool *all, Oid *relids, int *nrelids)
{
	bool		any;

	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	*all = slot->sweep_all;
	*nrelids = slot->nsweep;
	memcpy(relids, slot->sweep_relids, sizeof(Oid) * slot->nsweep);
	any = slot->sweep_all || slot->nsweep > 0;
	slot->sweep_all = false;
	slot->nsweep = 0;
	LWLockRelease(slot->lock);
	return any;
}

void
sb_slot_set_state(SbSlot *slot, SbWorkerState state)
{
	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	slot->state = state;
	LWLockRelease(slot->lock);
}

void
sb_slot_set_error(SbSlot *slot, const char *error)
{
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	strlcpy(slot->last_error, error, SB_ERROR_LEN);
	slot->last_error_at = now;
	LWLockRelease(slot->lock);
}

void
sb_slot_count(SbSlot *slot, int64 sent, int64 failed)
{
	TimestampTz now = sent > 0 ? GetCurrentTimestamp() : 0;

	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	slot->sent += sent;
	slot->failed += failed;
	if (sent > 0)
		slot->last_sent_at = now;
	LWLockRelease(slot->lock);
}

static const char *
state_name(SbWorkerState state)
{
	switch (state)
	{
		case SB_STATE_STOPPED:
			return "stopped";
		case SB_STATE_NO_DATABASE:
			return "waiting for database";
		case SB_STATE_WAITING_EXTENSION:
			return "waiting for extension";
		case SB_STATE_CONNECTING:
			return "connecting";
		case SB_STATE_IDLE:
			return "idle";
		case SB_STATE_SENDING:
			return "sending";
		case SB_STATE_BACKOFF:
			return "backoff";
	}
	return "unknown";
}

/*
 * signalbus_worker_status: one row per configured database, behind the
 * signalbus_status view.
 */
PG_FUNCTION_INFO_V1(signalbus_worker_status);
Datum
signalbus_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	sb_require_shmem();
	InitMaterializedSRF(fcinfo, 0);

	for (i = 0; i < sb_shared->nslots; i++)
	{
		SbSlot	   *slot = &sb_shared->slots[i];
		SbSlot		copy;
		Datum		values[12];
		bool		nulls[12];

		LWLockAcquire(slot->lock, LW_SHARED);
		memcpy(&copy, slot, sizeof(SbSlot));
		LWLockRelease(slot->lock);

		memset(nulls, 0, sizeof(nulls));
		values[0] = CStringGetDatum(copy.dbname);
		values[0] = DirectFunctionCall1(namein, values[0]);
		if (copy.pid != 0)
			values[1] = Int32GetDatum(copy.pid);
		else
			nulls[1] = true;
		values[2] = CStringGetTextDatum(state_name(copy.state));
		if (copy.broker[0])
			values[3] = CStringGetTextDatum(copy.broker);
		else
			nulls[3] = true;
		values[4] = Int64GetDatum((int64) copy.sent);
		values[5] = Int64GetDatum((int64) copy.failed);
		values[6] = Int64GetDatum((int64) copy.overflows);
		values[7] = Int64GetDatum((int64) (copy.head - copy.tail));
		if (copy.last_error[0])
			values[8] = CStringGetTextDatum(copy.last_error);
		else
			nulls[8] = true;
		if (copy.last_error_at != 0)
			values[9] = TimestampTzGetDatum(copy.last_error_at);
		else
			nulls[9] = true;
		if (copy.last_sent_at != 0)
			values[10] = TimestampTzGetDatum(copy.last_sent_at);
		else
			nulls[10] = true;
		if (copy.state == SB_STATE_BACKOFF && copy.next_attempt_at != 0)
			values[11] = TimestampTzGetDatum(copy.next_attempt_at);
		else
			nulls[11] = true;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
