/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The launcher: one static background worker, connected to no
 *		database, that starts a dynamic worker for each database named in
 *		signalbus.databases and starts it again when it exits.
 *
 * States of a database's slot, as the launcher sees them:
 *	no worker, database missing	-> wait (logged once), look again in 10 s;
 *	no worker, database present	-> register a dynamic worker (main arg: the
 *								   slot, bgw_extra: the database OID);
 *	worker running				-> nothing to do;
 *	worker exited				-> start it again after a delay that doubles
 *								   (up to a minute) while it keeps exiting
 *								   within seconds of its start.
 * Dynamic workers are BGW_NEVER_RESTART: after a crash-and-restart cycle of
 * the postmaster only the launcher comes back, and it starts them anew.
 *
 *-------------------------------------------------------------------------
 */
#include "signalbus.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#define LAUNCHER_NAP_MS			1000
#define MISSING_DB_RECHECK_MS	10000
#define MAX_RESTART_DELAY_MS	60000
#define QUICK_EXIT_MS			10000

typedef struct LauncherEntry
{
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
	TimestampTz next_start;
	int			restart_delay_ms;
	bool		missing_logged;
	bool		no_slot_logged;
} LauncherEntry;

/*
 * sb_launcher_register: register the launcher with the postmaster.
 */
void
sb_launcher_register(void)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = 5;
	snprintf(bgw.bgw_library_name, BGW_MAXLEN, "signalbus");
	snprintf(bgw.bgw_function_name, BGW_MAXLEN, "signalbus_launcher_main");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "signalbus launcher");
	snprintf(bgw.bgw_type, BGW_MAXLEN, "signalbus launcher");
	RegisterBackgroundWorker(&bgw);
}

/*
 * lookup_database: the OID of the database named name, InvalidOid if there
 * is none.  A process connected to no database can only read the shared
 * catalog pg_database by a heap scan, as the autovacuum launcher does.
 */
static Oid
lookup_database(const char *name)
{
	Oid			dboid = InvalidOid;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (strcmp(NameStr(db->datname), name) == 0)
		{
			dboid = db->oid;
			break;
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return dboid;
}

static bool
start_worker(int i, Oid dboid, BackgroundWorkerHandle **handle)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(bgw.bgw_library_name, BGW_MAXLEN, "signalbus");
	snprintf(bgw.bgw_function_name, BGW_MAXLEN, "signalbus_worker_main");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "signalbus worker for database %s",
			 sb_shared->slots[i].dbname);
	snprintf(bgw.bgw_type, BGW_MAXLEN, "signalbus worker");
	bgw.bgw_main_arg = Int32GetDatum(i);
	memcpy(bgw.bgw_extra, &dboid, sizeof(Oid));
	bgw.bgw_notify_pid = MyProcPid;
	return RegisterDynamicBackgroundWorker(&bgw, handle);
}

void
signalbus_launcher_main(Datum arg)
{
	LauncherEntry *entries;
	int			i;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("signalbus launcher");

	entries = MemoryContextAllocZero(TopMemoryContext,
									 sizeof(LauncherEntry) * Max(sb_shared->nslots, 1));
	for (i = 0; i < sb_shared->nslots; i++)
		entries[i].restart_delay_ms = 1000;

	for (;;)
	{
		TimestampTz now;
		long		nap = LAUNCHER_NAP_MS;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		now = GetCurrentTimestamp();
		for (i = 0; i < sb_shared->nslots; i++)
		{
			LauncherEntry *e = &entries[i];
			SbSlot	   *slot = &sb_shared->slots[i];
			Oid			dboid;

			if (e->handle != NULL)
			{
				pid_t		pid;

				if (GetBackgroundWorkerPid(e->handle, &pid) != BGWH_STOPPED)
					continue;
				pfree(e->handle);
				e->handle = NULL;
				if (TimestampDifferenceExceeds(e->started_at, now, QUICK_EXIT_MS))
					e->restart_delay_ms = 1000;
				else
					e->restart_delay_ms = Min(e->restart_delay_ms * 2,
											  MAX_RESTART_DELAY_MS);
				e->next_start = TimestampTzPlusMilliseconds(now, e->restart_delay_ms);
			}
			if (now < e->next_start)
			{
				nap = Min(nap, TimestampDifferenceMilliseconds(now, e->next_start));
				continue;
			}

			dboid = lookup_database(slot->dbname);
			if (!OidIsValid(dboid))
			{
				if (!e->missing_logged)
					ereport(LOG,
							(errmsg("signalbus: database \"%s\" named in signalbus.databases does not exist",
									slot->dbname),
							 errdetail("Its worker starts once the database is created.")));
				e->missing_logged = true;
				sb_slot_set_state(slot, SB_STATE_NO_DATABASE);
				e->next_start = TimestampTzPlusMilliseconds(now, MISSING_DB_RECHECK_MS);
				continue;
			}
			e->missing_logged = false;

			if (!start_worker(i, dboid, &e->handle))
			{
				if (!e->no_slot_logged)
					ereport(WARNING,
							(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
							 errmsg("signalbus: could not start the worker for database \"%s\": no free background worker slot",
									slot->dbname),
							 errhint("Raise max_worker_processes.")));
				e->no_slot_logged = true;
				e->handle = NULL;
				e->next_start = TimestampTzPlusMilliseconds(now, MISSING_DB_RECHECK_MS);
				continue;
			}
			e->no_slot_logged = false;
			e->started_at = now;
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(nap, 10), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
