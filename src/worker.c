/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The worker of one database: pops the rows that committing backends
 *		queued, sweeps every signal table each signalbus.flush_interval,
 *		and keeps one connection to the broker.
 *
 * The loop, in worker_spi's shape:
 *	- reload the configuration on SIGHUP (a new broker URL reconnects);
 *	- read the registered signal tables (at start, when a registration
 *	  changed, and before each sweep); wait quietly while the extension is
 *	  not created in the database;
 *	- when there is work, connect if needed, then send: queued rows by
 *	  ctid, then, if due, a sweep of every table; bursts are pipelined
 *	  (up to SB_PIPELINE_DEPTH in flight: the next ones are published while
 *	  the broker confirms the first), up to SB_BURSTS_PER_XACT of them in a
 *	  transaction;
 *	- wait on the latch until the next sweep.
 * A broker failure keeps the unconfirmed rows, closes the connection and backs
 * off exponentially (with jitter, up to signalbus.max_backoff); the next
 * connection starts with a sweep, so nothing the failure interrupted
 * waits for the next interval.  Errors are logged once per change of
 * state, and shown in signalbus_status.
 *
 *-------------------------------------------------------------------------
 */
#include "signalbus.h"

#include "access/xact.h"
#include "common/pg_prng.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#define SB_POP_BATCH		8192
#define SB_TABLE_ERRORS		64
#define SB_BURSTS_PER_XACT	8	/* bursts a transaction sends, pipelined */
#define SB_PIPELINE_DEPTH	3	/* bursts in flight at most */

static SbSlot *slot = NULL;
static SbAmqp *conn = NULL;
static SbRetry *retry = NULL;
static char *conn_settings = NULL;	/* the settings conn was opened with */
static MemoryContext catalog_cxt = NULL;	/* the list of signal tables */
static MemoryContext loop_cxt = NULL;	/* reset every iteration */
static List *signals = NIL;
static bool extension_present = false;
static bool catalog_loaded = false;
static uint32 catalog_generation = 0;

static int	backoff_attempts = 0;
static TimestampTz backoff_until = 0;
static TimestampTz next_sweep = 0;
static TimestampTz last_sweep = 0;	/* when the last full sweep started */
static bool sweep_everything = true;
static char *logged_connection = NULL;	/* settings last logged as connected */

/* what was last logged, so that a repeated failure is logged once */
static char logged_broker_error[SB_ERROR_LEN] = "";
static char recovered_error[SB_ERROR_LEN] = "";	/* the failure last recovered from */
static TimestampTz recovered_at = 0;

#define SB_FLAP_WINDOW_MS	60000
typedef struct TableError
{
	Oid			relid;
	char		message[SB_ERROR_LEN];
} TableError;
static TableError table_errors[SB_TABLE_ERRORS];
static int	ntable_errors = 0;

static void
worker_detach(int code, Datum arg)
{
	if (conn)
		sb_amqp_close(conn);
	conn = NULL;
	if (slot)
	{
		LWLockAcquire(slot->lock, LW_EXCLUSIVE);
		slot->pid = 0;
		slot->latch = NULL;
		slot->dboid = InvalidOid;
		slot->state = SB_STATE_STOPPED;
		LWLockRelease(slot->lock);
	}
}

static void
set_broker_display(void)
{
	char	   *display = sb_amqp_display_url(signalbus_amqp_url);

	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	strlcpy(slot->broker, display, SB_BROKER_LEN);
	LWLockRelease(slot->lock);
	pfree(display);
}

static void
disconnect(void)
{
	if (conn)
		sb_amqp_close(conn);
	conn = NULL;
}

/*
 * broker_failed: close the connection, back off, and say so once.
 */
static void
broker_failed(const char *message)
{
	TimestampTz now = GetCurrentTimestamp();
	double		delay;

	disconnect();
	delay = 1000.0 * (1 << Min(backoff_attempts, 16));
	delay = Min(delay, (double) signalbus_max_backoff);
	/* jitter: between half and all of the delay */
	delay *= 0.5 + 0.5 * pg_prng_double(&pg_global_prng_state);
	backoff_attempts++;
	backoff_until = TimestampTzPlusMilliseconds(now, (int64) delay);
	sweep_everything = true;

	sb_slot_set_error(slot, message);
	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	slot->state = SB_STATE_BACKOFF;
	slot->next_attempt_at = backoff_until;
	LWLockRelease(slot->lock);

	/*
	 * The same failure again within a minute of a recovery is the same
	 * episode (a broker that flaps, e.g. under a resource alarm): say it
	 * once, not once per attempt.
	 */
	if (strcmp(logged_broker_error, message) != 0 &&
		!(recovered_at != 0 &&
		  !TimestampDifferenceExceeds(recovered_at, now, SB_FLAP_WINDOW_MS) &&
		  strcmp(recovered_error, message) == 0))
	{
		ereport(LOG,
				(errmsg("signalbus worker for database \"%s\": %s",
						slot->dbname, message),
				 errdetail("Signals stay in their tables and are sent once the broker can be reached; retrying with backoff.")));
		strlcpy(logged_broker_error, message, SB_ERROR_LEN);
	}
}

static void
broker_succeeded(void)
{
	backoff_attempts = 0;
	backoff_until = 0;
	if (logged_broker_error[0] != '\0')
	{
		char	   *display = sb_amqp_display_url(signalbus_amqp_url);

		ereport(LOG,
				(errmsg("signalbus worker for database \"%s\": broker at %s reachable again",
						slot->dbname, display)));
		strlcpy(recovered_error, logged_broker_error, SB_ERROR_LEN);
		recovered_at = GetCurrentTimestamp();
		logged_broker_error[0] = '\0';
	}
}

/*
 * table_failed: a table could not be sent (e.g. a special column altered to
 * a wrong type); its rows stay.  Logged once per table and message.
 */
static void
table_failed(Oid relid, const char *message)
{
	int			i;

	sb_slot_set_error(slot, message);
	for (i = 0; i < ntable_errors; i++)
		if (table_errors[i].relid == relid)
			break;
	if (i < ntable_errors && strcmp(table_errors[i].message, message) == 0)
		return;
	if (i == ntable_errors)
	{
		if (ntable_errors == SB_TABLE_ERRORS)
			i = ntable_errors - 1;	/* forget the last one */
		else
			ntable_errors++;
	}
	table_errors[i].relid = relid;
	strlcpy(table_errors[i].message, message, SB_ERROR_LEN);
	ereport(LOG,
			(errmsg("signalbus worker for database \"%s\": %s",
					slot->dbname, message)));
}

static void
table_succeeded(Oid relid)
{
	int			i;

	for (i = 0; i < ntable_errors; i++)
		if (table_errors[i].relid == relid)
		{
			table_errors[i] = table_errors[--ntable_errors];
			return;
		}
}

/*
 * caught_error: turn the error being handled into text, clean up the
 * transaction.  Returns the message (in loop_cxt) and its SQLSTATE.
 */
static char *
caught_error(int *sqlerrcode)
{
	ErrorData  *edata;
	char	   *message;

	MemoryContextSwitchTo(loop_cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(loop_cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
	*sqlerrcode = edata->sqlerrcode;
	message = pstrdup(edata->message ? edata->message : "unknown error");
	FreeErrorData(edata);
	return message;
}

/*
 * load_catalog: read the registered signal tables, or learn that the
 * extension is not (or no longer) created.
 */
static void
load_catalog(void)
{
	uint32		generation;

	LWLockAcquire(slot->lock, LW_SHARED);
	generation = slot->config_generation;
	LWLockRelease(slot->lock);

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "signalbus: reading signal tables");

		MemoryContextReset(catalog_cxt);
		signals = NIL;
		extension_present = sb_extension_info(NULL, NULL);
		if (extension_present)
		{
			MemoryContext old = MemoryContextSwitchTo(catalog_cxt);

			signals = sb_load_signals(InvalidOid);
			MemoryContextSwitchTo(old);
		}
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_activity(STATE_IDLE, NULL);
		catalog_loaded = true;
		catalog_generation = generation;
	}
	PG_CATCH();
	{
		int			code;
		char	   *message = caught_error(&code);

		MemoryContextReset(catalog_cxt);
		signals = NIL;
		catalog_loaded = false;
		table_failed(InvalidOid, psprintf("could not read signal tables: %s", message));
	}
	PG_END_TRY();
}

static SbSignal *
find_signal(Oid relid)
{
	ListCell   *lc;

	foreach(lc, signals)
	{
		SbSignal   *sig = lfirst(lc);

		if (sig->relid == relid)
			return sig;
	}
	return NULL;
}

/*
 * A run: bursts the worker sends back to back, either one table's backlog
 * (a sweep: sig set) or rows taken from the commit queue (entries set,
 * sorted by table and ctid).
 */
typedef struct Run
{
	SbSignal   *sig;			/* sweep: the table */
	ItemPointerData after;		/* sweep: the next burst starts after it */
	bool		exhausted;		/* sweep: nothing more to send now */
	SbQueueEntry *entries;		/* queue: the rows */
	int			nentries;
	int			pos;			/* queue: the next row to send */
	bool		solo;			/* this transaction's table failed lately */
} Run;

typedef struct Burst
{
	SbSignal   *sig;
	ItemPointerData *tids;		/* queue: the rows, else a sweep */
	int			ntids;
	SbInFlight *flight;			/* published, verdicts outstanding */
	SbBurst		res;
} Burst;

/*
 * table_is_failing: whether relid's last attempt failed with an error.
 */
static bool
table_is_failing(Oid relid)
{
	int			i;

	for (i = 0; i < ntable_errors; i++)
		if (table_errors[i].relid == relid)
			return true;
	return false;
}

/*
 * may_join: whether a burst of sig may be the started-th of a transaction.
 * An ordered table's burst is alone in its transaction (the next one
 * depends on what this one deletes), and so is a table that failed lately
 * (its error would roll back the other bursts, sent already: duplicates).
 */
static bool
may_join(Run *run, SbSignal *sig, int started)
{
	bool		alone = sig->order_by != NULL || table_is_failing(sig->relid);

	if (started == 0)
	{
		run->solo = alone;
		return true;
	}
	return !alone && !run->solo;
}

/*
 * next_burst: the run's next burst, the started-th of its transaction;
 * false when there is none that may join it.
 */
static bool
next_burst(Run *run, int started, Burst *b)
{
	memset(b, 0, sizeof(Burst));
	if (run->entries == NULL)
	{
		if (run->exhausted || !may_join(run, run->sig, started))
			return false;
		b->sig = run->sig;
		return true;
	}
	while (run->pos < run->nentries)
	{
		Oid			relid = run->entries[run->pos].relid;
		SbSignal   *sig = find_signal(relid);
		int			end = run->pos;
		int			j;

		while (end < run->nentries && run->entries[end].relid == relid &&
			   (sig == NULL || end - run->pos < sig->burst_count))
			end++;
		if (sig == NULL)
		{
			run->pos = end;		/* no longer a signal table */
			continue;
		}
		if (!may_join(run, sig, started))
			return false;
		b->sig = sig;
		b->ntids = end - run->pos;
		b->tids = palloc(sizeof(ItemPointerData) * b->ntids);
		for (j = 0; j < b->ntids; j++)
			b->tids[j] = run->entries[run->pos + j].tid;
		run->pos = end;
		return true;
	}
	return false;
}

/*
 * start_burst: lock, build and publish b; note what that says of the run.
 */
static void
start_burst(Run *run, Burst *b)
{
	b->flight = sb_burst_start(conn, b->sig, b->tids, b->ntids,
							   b->tids ? NULL : &run->after, false, retry,
							   &b->res);
	if (b->tids == NULL)
	{
		run->after = b->res.last_tid;
		if (b->res.busy || b->res.fetched < b->sig->burst_count)
			run->exhausted = true;
	}
	else if (b->res.fetched < b->ntids)
	{
		/*
		 * A queued row not found was sent by someone else, or updated (new
		 * ctid) by its own transaction: sweep.
		 */
		sb_slot_request_sweep(slot, b->sig->relid);
	}
}

/*
 * send_run: send run's bursts, in transactions of up to SB_BURSTS_PER_XACT
 * bursts.  Within a transaction the bursts are pipelined: the next one is
 * locked, built and published while the broker confirms the last one, so
 * that the broker does not wait for the database.  The transaction commits
 * once the last verdicts are in and the confirmed rows deleted.  Returns
 * false when the broker failed (the caller stops sending).
 */
static bool
send_run(Run *run)
{
	MemoryContext run_cxt = AllocSetContextCreate(CurrentMemoryContext,
												  "signalbus run",
												  ALLOCSET_DEFAULT_SIZES);
	bool		broker_ok = true;

	for (;;)
	{
		Burst	   *bursts;
		volatile int nstarted = 0;
		volatile int nfinished = 0;
		volatile int working = 0;	/* the burst being started or finished */
		volatile bool failed = false;
		bool		broker_failed_now = false;
		int			i;

		MemoryContextReset(run_cxt);
		MemoryContextSwitchTo(run_cxt);
		bursts = palloc0(sizeof(Burst) * SB_BURSTS_PER_XACT);
		if (!next_burst(run, 0, &bursts[0]))
			break;

		PG_TRY();
		{
			SetCurrentStatementStartTimestamp();
			StartTransactionCommand();
			PushActiveSnapshot(GetTransactionSnapshot());
			pgstat_report_activity(STATE_RUNNING, "signalbus: sending");

			start_burst(run, &bursts[0]);
			nstarted = 1;
			while (nfinished < nstarted)
			{
				Burst	   *b = &bursts[nfinished];

				/* the next bursts go out before this one's verdicts are in */
				while (nstarted - nfinished < SB_PIPELINE_DEPTH && nstarted < SB_BURSTS_PER_XACT &&
					sb_amqp_usable(conn) && sb_amqp_settled(conn) &&
					next_burst(run, nstarted, &bursts[nstarted]))
				{
					working = nstarted;
					start_burst(run, &bursts[nstarted]);
					nstarted++;
				}
				working = nfinished;
				if (b->flight != NULL)
				{
					SbInFlight *f = b->flight;

					b->flight = NULL;
					sb_burst_finish(conn, f, &b->res);
				}
				if (b->sig->order_by != NULL && b->tids == NULL && b->res.sent == 0)
					run->exhausted = true;
				nfinished++;
			}

			PopActiveSnapshot();
			CommitTransactionCommand();
			pgstat_report_stat(false);
			pgstat_report_activity(STATE_IDLE, NULL);
		}
		PG_CATCH();
		{
			int			code;
			char	   *message = caught_error(&code);
			SbSignal   *sig = bursts[working].sig;

			/* the bursts in flight went with the transaction's memory */
			sb_amqp_forget(conn);
			failed = true;
			if (run->entries == NULL)
				run->exhausted = true;
			else
			{
				int			j;

				/*
				 * The queued rows of the rolled-back bursts are still in their
				 * tables: sweep them, but not a table that fails on its own.
				 */
				for (j = 0; j < Max(nstarted, working + 1); j++)
					if (bursts[j].sig != sig || code == ERRCODE_LOCK_NOT_AVAILABLE)
						sb_slot_request_sweep(slot, bursts[j].sig->relid);
			}
			if (ERRCODE_TO_CATEGORY(code) == ERRCODE_CONNECTION_EXCEPTION)
			{
				broker_failed(message);
				broker_ok = false;
			}
			else if (code != ERRCODE_LOCK_NOT_AVAILABLE)	/* else: busy */
				table_failed(sig->relid,
							 psprintf("could not send signals of table \"%s\": %s",
									  sig->relname, message));
		}
		PG_END_TRY();
		MemoryContextSwitchTo(run_cxt);
		if (!broker_ok)
			break;
		if (failed)
			continue;			/* rolled back: nothing was sent */

		for (i = 0; i < nfinished; i++)
		{
			Burst	   *b = &bursts[i];

			sb_slot_count(slot, b->res.sent, b->res.failed);
			if (b->res.error[0] != '\0')
				sb_slot_set_error(slot, b->res.error);
			if (b->res.broker_failed)
				broker_failed_now = true;
			else
				table_succeeded(b->sig->relid);
		}
		if (broker_failed_now)
		{
			broker_failed(sb_amqp_last_error(conn));
			broker_ok = false;
			break;
		}
		broker_succeeded();

		/* a sweep of a large table lets a reload (new broker?) through */
		if (run->entries == NULL && ConfigReloadPending)
			break;
		CHECK_FOR_INTERRUPTS();
	}
	MemoryContextSwitchTo(loop_cxt);
	MemoryContextDelete(run_cxt);
	return broker_ok;
}

/*
 * sweep_table: send every pending row of sig, in bursts.
 */
static bool
sweep_table(SbSignal *sig)
{
	Run			run;

	memset(&run, 0, sizeof(run));
	run.sig = sig;
	ItemPointerSet(&run.after, 0, 0);
	return send_run(&run);
}

static int
compare_entries(const void *a, const void *b)
{
	const SbQueueEntry *x = a;
	const SbQueueEntry *y = b;

	if (x->relid != y->relid)
		return x->relid < y->relid ? -1 : 1;
	return ItemPointerCompare((ItemPointer) &x->tid, (ItemPointer) &y->tid);
}

/*
 * send_queued: send the rows committing backends queued, by ctid.
 */
static bool
send_queued(SbQueueEntry *buf)
{
	for (;;)
	{
		int			n = sb_queue_pop(slot, buf, SB_POP_BATCH);
		Run			run;

		if (n == 0)
			return true;
		qsort(buf, n, sizeof(SbQueueEntry), compare_entries);
		memset(&run, 0, sizeof(run));
		run.entries = buf;
		run.nentries = n;
		if (!send_run(&run))
			return false;
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * sweep: every table (all) or just those whose rows overflowed the queue.
 */
static bool
sweep(bool all, const Oid *relids, int nrelids)
{
	ListCell   *lc;

	foreach(lc, signals)
	{
		SbSignal   *sig = lfirst(lc);
		bool		wanted = all;
		int			i;

		for (i = 0; !wanted && i < nrelids; i++)
			wanted = (relids[i] == sig->relid);
		if (wanted && !sweep_table(sig))
			return false;
	}
	return true;
}

static void
wait_for(long timeout_ms)
{
	int			rc;

	rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
				   Max(timeout_ms, 1), PG_WAIT_EXTENSION);
	if (rc & WL_LATCH_SET)
		ResetLatch(MyLatch);
}

void
signalbus_worker_main(Datum arg)
{
	int			index = DatumGetInt32(arg);
	Oid			dboid;
	SbQueueEntry *buf;

	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	slot = &sb_shared->slots[index];

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("signalbus worker");

	/*
	 * The worker's commits only delete rows the broker already confirmed:
	 * losing one in a crash means sending that message again, which
	 * at-least-once delivery allows, so they need not wait for the WAL flush
	 * that the committing backends are waiting for too.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * The worker is a superuser session: no schema a user can write to may
	 * be on its path (ALTER DATABASE ... SET search_path must not reach it).
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	before_shmem_exit(worker_detach, (Datum) 0);
	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	slot->pid = MyProcPid;
	slot->latch = MyLatch;
	slot->dboid = dboid;
	slot->state = SB_STATE_IDLE;
	LWLockRelease(slot->lock);
	set_broker_display();

	catalog_cxt = AllocSetContextCreate(TopMemoryContext, "signalbus catalog",
										ALLOCSET_SMALL_SIZES);
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "signalbus loop",
									 ALLOCSET_DEFAULT_SIZES);
	buf = MemoryContextAlloc(TopMemoryContext, sizeof(SbQueueEntry) * SB_POP_BATCH);
	retry = sb_retry_create();

	for (;;)
	{
		TimestampTz now;
		bool		sweep_due;
		bool		sweep_all;
		Oid			relids[SB_SWEEP_RELIDS];
		int			nrelids;
		uint32		generation;

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(loop_cxt);
		MemoryContextSwitchTo(loop_cxt);

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			set_broker_display();
			/* a shorter signalbus.flush_interval counts from the last sweep */
			if (last_sweep != 0)
				next_sweep = Min(next_sweep,
								 TimestampTzPlusMilliseconds(last_sweep,
															 signalbus_flush_interval));
			if (conn_settings == NULL ||
				strcmp(conn_settings, sb_amqp_settings_signature()) != 0)
			{
				disconnect();
				backoff_until = 0;
				backoff_attempts = 0;
				sweep_everything = true;
			}
		}

		now = GetCurrentTimestamp();
		sweep_due = sweep_everything || now >= next_sweep;

		LWLockAcquire(slot->lock, LW_SHARED);
		generation = slot->config_generation;
		LWLockRelease(slot->lock);
		if (!catalog_loaded || generation != catalog_generation || sweep_due)
			load_catalog();

		if (!extension_present)
		{
			/* nothing to send until CREATE EXTENSION; drop queued rows */
			disconnect();
			while (sb_queue_pop(slot, buf, SB_POP_BATCH) > 0)
				;
			(void) sb_slot_take_sweep(slot, &sweep_all, relids, &nrelids);
			sb_slot_set_state(slot, SB_STATE_WAITING_EXTENSION);
			sweep_everything = true;
			wait_for(signalbus_flush_interval);
			continue;
		}

		if (!sweep_due && sb_queue_is_empty(slot))
		{
			sb_slot_set_state(slot, SB_STATE_IDLE);
			wait_for(TimestampDifferenceMilliseconds(now, next_sweep));
			continue;
		}

		/* there is work: the broker first */
		if (backoff_until != 0 && now < backoff_until)
		{
			wait_for(TimestampDifferenceMilliseconds(now, backoff_until));
			continue;
		}
		if (conn == NULL)
		{
			sb_slot_set_state(slot, SB_STATE_CONNECTING);
			PG_TRY();
			{
				char	   *name = psprintf("signalbus worker (database %s)",
											slot->dbname);

				conn = sb_amqp_connect(signalbus_amqp_url, name);
				if (conn_settings)
					pfree(conn_settings);
				conn_settings = MemoryContextStrdup(TopMemoryContext,
											   sb_amqp_settings_signature());
			}
			PG_CATCH();
			{
				int			code;
				char	   *message = caught_error(&code);

				conn = NULL;
				broker_failed(message);
			}
			PG_END_TRY();
			if (conn == NULL)
				continue;
			/*
			 * Say "connected" for a new broker (or new settings) only: a
			 * reconnection to the same one is told by broker_succeeded() once
			 * a burst goes through, so a broker that accepts connections but
			 * keeps failing them (a resource alarm) is logged once, not twice
			 * per attempt.
			 */
			if (logged_connection == NULL || strcmp(logged_connection, conn_settings) != 0)
			{
				char	   *display = sb_amqp_display_url(signalbus_amqp_url);

				ereport(LOG,
						(errmsg("signalbus worker for database \"%s\" connected to %s",
								slot->dbname, display)));
				logged_broker_error[0] = '\0';
				if (logged_connection)
					pfree(logged_connection);
				logged_connection = MemoryContextStrdup(TopMemoryContext, conn_settings);
			}
			backoff_attempts = 0;
			backoff_until = 0;
		}

		sb_slot_set_state(slot, SB_STATE_SENDING);
		if (!send_queued(buf))
			continue;

		(void) sb_slot_take_sweep(slot, &sweep_all, relids, &nrelids);
		if (sweep_due)
		{
			/* the next sweep is due one interval after this one started */
			last_sweep = now;
			next_sweep = TimestampTzPlusMilliseconds(now, signalbus_flush_interval);
			sweep_everything = false;
			if (!sweep(true, NULL, 0))
				continue;
		}
		else if ((sweep_all || nrelids > 0) && !sweep(sweep_all, relids, nrelids))
			continue;

		sb_slot_set_state(slot, SB_STATE_IDLE);
	}
}
