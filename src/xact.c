/*-------------------------------------------------------------------------
 *
 * xact.c
 *		Rows recorded by the current transaction, and the transaction
 *		callbacks that hand them to the worker after commit.
 *
 * The trigger appends (relation, ctid, subtransaction) to an array in
 * TopTransactionContext.  An aborted subtransaction drops its suffix of the
 * array; an aborted or prepared transaction hands over nothing.  At commit,
 * when the rows are already visible to others, the array is copied into the
 * database's queue in shared memory and the worker's latch is set.
 *
 * Nothing here may raise an error after commit: the commit callback takes
 * one LWLock, copies, and sets a latch.  When the queue is full, the tables
 * whose rows did not fit are marked for a sweep instead; the array itself is
 * capped at the queue's capacity for the same reason, so a huge transaction
 * costs a bounded amount of memory and ends in a sweep.
 *
 *-------------------------------------------------------------------------
 */
#include "signalbus.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "utils/memutils.h"

typedef struct SbRecorded
{
	Oid			relid;
	ItemPointerData tid;
	SubTransactionId subid;
} SbRecorded;

#define SB_XACT_SWEEP_RELIDS 8

static SbRecorded *recorded = NULL;
static int	nrecorded = 0;
static int	maxrecorded = 0;

/* tables with rows beyond the cap; sweep_all when there are too many */
static Oid	overflow_relids[SB_XACT_SWEEP_RELIDS];
static int	noverflow = 0;
static bool overflow_all = false;
static int64 noverflow_rows = 0;	/* rows not recorded: beyond the cap */
static bool config_changed = false;

static void
reset_xact_state(void)
{
	/* the memory itself goes with TopTransactionContext */
	recorded = NULL;
	nrecorded = 0;
	maxrecorded = 0;
	noverflow = 0;
	overflow_all = false;
	noverflow_rows = 0;
	config_changed = false;
}

static void
note_overflow(Oid relid)
{
	int			i;

	for (i = 0; i < noverflow; i++)
		if (overflow_relids[i] == relid)
			return;
	if (noverflow < SB_XACT_SWEEP_RELIDS)
		overflow_relids[noverflow++] = relid;
	else
		overflow_all = true;
}

/*
 * sb_xact_record: remember a row inserted by this transaction.
 */
void
sb_xact_record(Oid relid, ItemPointer tid)
{
	if (nrecorded >= maxrecorded)
	{
		int			cap = sb_shared->capacity;

		if (nrecorded >= cap)
		{
			note_overflow(relid);
			noverflow_rows++;
			return;
		}
		if (recorded == NULL)
		{
			maxrecorded = Min(64, cap);
			recorded = MemoryContextAlloc(TopTransactionContext,
										  sizeof(SbRecorded) * maxrecorded);
		}
		else
		{
			maxrecorded = Min(maxrecorded * 2, cap);
			recorded = repalloc(recorded, sizeof(SbRecorded) * maxrecorded);
		}
	}
	recorded[nrecorded].relid = relid;
	recorded[nrecorded].tid = *tid;
	recorded[nrecorded].subid = GetCurrentSubTransactionId();
	nrecorded++;
}

/*
 * sb_xact_config_changed: a registration changed in this transaction; tell
 * the worker at commit so that it reloads its list of signal tables.
 */
void
sb_xact_config_changed(void)
{
	config_changed = true;
}

/*
 * hand_over: copy the committed rows into the queue and wake the worker.
 * Runs after commit: it must not fail.
 */
static void
hand_over(void)
{
	SbSlot	   *slot;
	Latch	   *latch;
	uint64		cap;
	uint64		space;
	int			n;
	int			i;

	if (nrecorded == 0 && noverflow == 0 && !overflow_all && !config_changed)
		return;
	slot = sb_slot_for_database(MyDatabaseId);
	if (slot == NULL)
		return;

	cap = sb_shared->capacity;
	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	space = cap - (slot->head - slot->tail);
	n = (int) Min((uint64) nrecorded, space);
	for (i = 0; i < n; i++)
	{
		SbQueueEntry *e = &slot->entries[(slot->head + i) % cap];

		e->relid = recorded[i].relid;
		e->tid = recorded[i].tid;
	}
	slot->head += n;
	for (i = n; i < nrecorded; i++)
		sb_slot_mark_sweep(slot, recorded[i].relid);
	slot->overflows += (nrecorded - n) + noverflow_rows;
	for (i = 0; i < noverflow; i++)
		sb_slot_mark_sweep(slot, overflow_relids[i]);
	if (overflow_all)
		slot->sweep_all = true;
	if (config_changed)
		slot->config_generation++;
	latch = slot->latch;
	LWLockRelease(slot->lock);

	if (latch)
		SetLatch(latch);
}

static void
sb_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			hand_over();
			reset_xact_state();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			reset_xact_state();
			break;
		default:
			break;
	}
}

static void
sb_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					SubTransactionId parentSubid, void *arg)
{
	/*
	 * Rows recorded since mySubid started carry mySubid or a later id (its
	 * children), and they form a suffix of the array: drop it.
	 */
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		while (nrecorded > 0 && recorded[nrecorded - 1].subid >= mySubid)
			nrecorded--;
	}
}

/*
 * sb_xact_init: register the callbacks, once per process.
 */
void
sb_xact_init(void)
{
	RegisterXactCallback(sb_xact_callback, NULL);
	RegisterSubXactCallback(sb_subxact_callback, NULL);
}
