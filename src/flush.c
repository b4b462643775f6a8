/*-------------------------------------------------------------------------
 *
 * flush.c
 *		The flush engine, shared by the worker and the SQL functions:
 *		lock a burst of rows, turn them into messages, publish them, wait
 *		for the broker's confirms, delete exactly the confirmed rows.
 *
 * A burst runs in the caller's transaction: the worker's transactions hold
 * a few bursts each, signalbus_flushmany() commits after every burst,
 * signalbus_flush() runs them all in the calling transaction (so a ROLLBACK
 * brings the sent rows back: duplicates, never a loss).  A burst is started
 * (rows locked, messages built and published) and finished (verdicts read,
 * confirmed rows deleted) in two steps, so that the next burst can be
 * started in between: the broker then works while the database does.  Rows are locked FOR UPDATE SKIP LOCKED, so concurrent senders
 * never send the same row at the same time; an ordered table waits for
 * locked rows instead, in order_by order.
 *
 * Everything done to a signal table runs as the table's owner, in a
 * security-restricted operation with search_path = pg_catalog, pg_temp, the
 * way PostgreSQL runs REFRESH MATERIALIZED VIEW: neither the worker (a
 * superuser session) nor a flushing user lends its privileges to the
 * table's triggers, defaults or index expressions.
 *
 *-------------------------------------------------------------------------
 */
#include "signalbus.h"

#include "access/genam.h"
#include "access/relation.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "catalog/index.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/fmgrprotos.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "nodes/parsenodes.h"

/* first key of the advisory lock that serializes ordered senders */
#define SB_ORDERED_LOCK_KEY	0x53424C4B

/* a burst's rows are read and handed to the broker in this many chunks */
#define SB_CHUNKS_PER_BURST	4
#define SB_MIN_CHUNK		16

/* how often signalbus_flushmany() reports progress */
#define SB_PROGRESS_INTERVAL_MS 10000

typedef enum SbFlushMode
{
	SB_FLUSH,					/* any order, skip locked rows */
	SB_FLUSH_ORDERED,			/* order_by order, wait for locked rows */
	SB_FLUSH_MANY				/* commit after every burst */
} SbFlushMode;

/*
 * Prepared plans of the flush queries, kept for the life of the process
 * (SPI_keepplan) and found by their text: the text names the table and its
 * special columns, so a table altered to have other columns gets another
 * plan, and PostgreSQL's plan cache replans one whose table changed.
 */
typedef struct SbCachedPlan
{
	char	   *sql;
	SPIPlanPtr	plan;
} SbCachedPlan;

#define SB_MAX_CACHED_PLANS 256

static SbCachedPlan cached_plans[SB_MAX_CACHED_PLANS];
static int	ncached_plans = 0;

/*
 * cached_plan: the prepared plan of sql, kept for the life of the process
 * (caller is connected to SPI).
 */
static SPIPlanPtr
cached_plan(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = NULL;
	int			i;

	for (i = 0; i < ncached_plans; i++)
	{
		if (strcmp(cached_plans[i].sql, sql) == 0)
		{
			plan = cached_plans[i].plan;
			break;
		}
	}
	if (plan == NULL)
	{
		if (ncached_plans == SB_MAX_CACHED_PLANS)
		{
			/* tables come and go: start afresh rather than grow */
			for (i = 0; i < ncached_plans; i++)
			{
				SPI_freeplan(cached_plans[i].plan);
				pfree(cached_plans[i].sql);
			}
			ncached_plans = 0;
		}
		plan = SPI_prepare(sql, nargs, argtypes);
		if (plan == NULL)
			elog(ERROR, "signalbus: could not prepare \"%s\": %s", sql,
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "signalbus: SPI_keepplan failed");
		cached_plans[ncached_plans].sql = MemoryContextStrdup(CacheMemoryContext, sql);
		cached_plans[ncached_plans].plan = plan;
		ncached_plans++;
	}
	return plan;
}

/*
 * execute_cached: run sql with args through its cached plan.
 */
static int
execute_cached(const char *sql, int nargs, Oid *argtypes, Datum *args)
{
	return SPI_execute_plan(cached_plan(sql, nargs, argtypes), args, NULL,
							false, 0);
}

/*
 * tid_array: a tid[] Datum of n tids.
 */
static Datum
tid_array(const ItemPointerData *tids, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	int			i;

	for (i = 0; i < n; i++)
		elems[i] = PointerGetDatum(&tids[i]);
	return PointerGetDatum(construct_array(elems, n, TIDOID,
										   sizeof(ItemPointerData), false,
										   TYPALIGN_SHORT));
}

/*
 * move_to_dead_letters: copy rows that failed signalbus.max_attempts times
 * into signalbus_dead_letters (the caller deletes them in the same
 * transaction).  The table is written as the extension's owner: the signal
 * table's owner may not write it.
 */
static void
move_to_dead_letters(const SbSignal *sig, const char *qualname, SbMessage *msgs,
					 const int *dead, const int *attempts,
					 const TimestampTz *first, int ndead)
{
	Oid			nspid;
	Oid			extowner;
	Oid			save_userid;
	int			save_sec;
	char	   *read_sql;
	char	   *insert_sql;
	Oid			read_types[1] = {TIDOID};
	Oid			insert_types[5] = {OIDOID, TEXTOID, TEXTOID, INT4OID, TIMESTAMPTZOID};
	int			i;

	if (!sb_extension_info(&nspid, &extowner))
		elog(ERROR, "extension \"%s\" is not installed", SIGNALBUS_EXTNAME);

	/* the row as jsonb is built by the table's owner's code, as its owner */
	read_sql = psprintf("SELECT pg_catalog.to_jsonb(sb.*)::pg_catalog.text FROM ONLY %s AS sb "
						"WHERE sb.ctid OPERATOR(pg_catalog.=) $1", qualname);
	insert_sql = psprintf("INSERT INTO %s.signalbus_dead_letters "
						  "(signal, \"row\", error, attempts, first_failed_at, last_failed_at) "
						  "VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2::pg_catalog.jsonb, "
						  "$3, $4, $5, pg_catalog.now())",
						  quote_identifier(get_namespace_name(nspid)));

	for (i = 0; i < ndead; i++)
	{
		SbMessage  *m = &msgs[dead[i]];
		Datum		read_args[1];
		Datum		args[5];
		char	   *row;
		int			ret;

		read_args[0] = PointerGetDatum(&m->tid);
		ret = SPI_execute_with_args(read_sql, 1, read_types, read_args, NULL, false, 1);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			continue;			/* the row is gone: nothing to set aside */
		row = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		/* only writing the extension's own table needs its owner */
		args[0] = ObjectIdGetDatum(sig->relid);
		args[1] = CStringGetTextDatum(row);
		args[2] = CStringGetTextDatum(m->error ? m->error : "failed");
		args[3] = Int32GetDatum(attempts[i]);
		args[4] = TimestampTzGetDatum(first[i]);
		GetUserIdAndSecContext(&save_userid, &save_sec);
		SetUserIdAndSecContext(extowner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
		ret = SPI_execute_with_args(insert_sql, 5, insert_types, args, NULL, false, 0);
		SetUserIdAndSecContext(save_userid, save_sec);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "signalbus: could not write signalbus_dead_letters: %s",
				 SPI_result_code_string(ret));
		ereport(LOG,
				(errmsg("signalbus: row %s of table \"%s\" moved to signalbus_dead_letters after %d failed attempts: %s",
						DatumGetCString(DirectFunctionCall1(tidout, PointerGetDatum(&m->tid))),
						sig->relname, attempts[i], m->error ? m->error : "failed")));
	}
}

/*
 * A burst between sb_burst_start() and sb_burst_finish(): its rows locked
 * by the current transaction, its messages published, the broker's
 * verdicts outstanding.  Everything it holds lives in cxt.
 */
struct SbInFlight
{
	MemoryContext cxt;
	const SbSignal *sig;
	char	   *qualname;
	SbRetry    *retry;
	TimestampTz now;
	SbMessage  *msgs;
	int			nmsgs;
	SbOutcome  *outcomes;
	SbPublish  *pub;
};

/* the identity and settings a signal table is worked on with */
typedef struct SbOwnerScope
{
	Oid			save_userid;
	int			save_sec;
	int			save_nestlevel;
} SbOwnerScope;

/*
 * become_owner: act as sig's owner, in a security-restricted operation,
 * with a safe search_path, until restore_user().
 */
static void
become_owner(const SbSignal *sig, SbOwnerScope *scope)
{
	GetUserIdAndSecContext(&scope->save_userid, &scope->save_sec);
	SetUserIdAndSecContext(sig->owner, scope->save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	scope->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true,
							 0, false);

	/*
	 * Rows are found by ctid: a TID scan touches just them, but for a burst of
	 * a thousand ctids in a large table the planner prices a sequential scan
	 * lower (it does not know the rows are in cache).  Do not let it.
	 */
	(void) set_config_option("enable_seqscan", "off",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true,
							 0, false);
}

static void
restore_user(SbOwnerScope *scope)
{
	AtEOXact_GUC(false, scope->save_nestlevel);
	SetUserIdAndSecContext(scope->save_userid, scope->save_sec);
}

/*
 * sb_burst_start: lock a burst of sig's pending rows, turn them into
 * messages and publish them, without waiting for the broker's verdicts.
 * Returns NULL when there is nothing to send (result says why: no rows,
 * a busy table); otherwise the burst, to be given to sb_burst_finish() in
 * the same transaction.  The next burst may be started meanwhile.
 *
 * tids: send just these rows (the commit queue's fast path), or, when NULL,
 * the next burst_count rows after *after in ctid order (a sweep).  skip_own:
 * leave rows inserted by the current transaction alone (for flushes run in
 * a user's transaction).  Raises an error for anything but the broker.
 */
SbInFlight *
sb_burst_start(SbAmqp *conn, const SbSignal *sig,
			   const ItemPointerData *tids, int ntids,
			   const ItemPointerData *after, bool skip_own, SbRetry *retry,
			   SbBurst *result)
{
	Relation	rel;
	StringInfoData sql;
	StringInfoData select_list;
	SbLayout	layout;
	char	   *qualname;
	Oid			argtypes[2];
	Datum		args[2];
	SbOwnerScope scope;
	SbInFlight *f;
	MemoryContext cxt;
	MemoryContext old;
	MemoryContext spicxt;
	Portal		portal;
	int			limit;
	int			chunk;
	uint64		i;
	bool		ordered = (sig->order_by != NULL);

	memset(result, 0, sizeof(SbBurst));
	if (after)
		result->last_tid = *after;

	/*
	 * The worker serves every table of its database: a table locked by
	 * someone else (CREATE INDEX, VACUUM FULL, ALTER TABLE) waits for the
	 * next sweep instead of stopping them all.
	 */
	if (retry != NULL && !ConditionalLockRelationOid(sig->relid, RowExclusiveLock))
	{
		result->busy = true;
		return NULL;
	}
	/* the table may have been dropped since the registrations were read */
	rel = try_relation_open(sig->relid, retry != NULL ? NoLock : RowExclusiveLock);
	if (rel == NULL)
		return NULL;

	/* everything of the burst lives in its own memory, freed by finish */
	cxt = AllocSetContextCreate(CurrentMemoryContext, "signalbus burst",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	f = palloc0(sizeof(SbInFlight));
	f->cxt = cxt;
	f->sig = sig;
	f->retry = retry;
	f->now = GetCurrentTimestamp();
	initStringInfo(&select_list);
	sb_check_columns(rel, &select_list, &layout);
	relation_close(rel, NoLock);

	qualname = quote_qualified_identifier(sig->nspname, sig->relname);
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT %s FROM ONLY %s AS sb", select_list.data,
					 qualname);
	if (tids)
	{
		appendStringInfoString(&sql, " WHERE sb.ctid OPERATOR(pg_catalog.=) ANY ($1)");
		argtypes[0] = TIDARRAYOID;
		args[0] = tid_array(tids, ntids);
	}
	else
	{
		if (!ordered)
			appendStringInfoString(&sql, " WHERE sb.ctid OPERATOR(pg_catalog.>) $1");
		argtypes[0] = TIDOID;
		args[0] = PointerGetDatum(&result->last_tid);
	}
	if (ordered)
	{
		/*
		 * One ordered sender per table at a time: they serialize here.  The
		 * worker (retry != NULL) serves every table of its database, so it
		 * never waits: a table whose ordered sender or first rows are busy
		 * is left for the next sweep (nothing behind a locked row overtakes
		 * it either way).
		 */
		if (retry == NULL)
			DirectFunctionCall2(pg_advisory_xact_lock_int4,
								Int32GetDatum(SB_ORDERED_LOCK_KEY),
								Int32GetDatum((int32) sig->relid));
		else if (!DatumGetBool(DirectFunctionCall2(pg_try_advisory_xact_lock_int4,
												   Int32GetDatum(SB_ORDERED_LOCK_KEY),
												   Int32GetDatum((int32) sig->relid))))
		{
			result->busy = true;
			MemoryContextSwitchTo(old);
			MemoryContextDelete(cxt);
			return NULL;
		}
		appendStringInfo(&sql, " ORDER BY %s", sig->order_by);
	}
	appendStringInfo(&sql, " LIMIT $2 FOR UPDATE OF sb%s",
					 !ordered ? " SKIP LOCKED" : (retry != NULL ? " NOWAIT" : ""));
	argtypes[1] = INT4OID;
	args[1] = Int32GetDatum(tids ? ntids : sig->burst_count);

	f->qualname = qualname;

	become_owner(sig, &scope);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	spicxt = CurrentMemoryContext;

	/*
	 * The rows are read (and locked) through a cursor, a chunk at a time,
	 * and each chunk is handed to the broker as soon as it is built: the
	 * broker works on the first rows while the next are read.  The messages
	 * outlive SPI's memory: they are built in the burst's.
	 */
	limit = DatumGetInt32(args[1]);
	chunk = Max(limit / (4 * SB_CHUNKS_PER_BURST), SB_MIN_CHUNK);	/* soon */
	portal = SPI_cursor_open(NULL, cached_plan(sql.data, 2, argtypes), args,
							 NULL, false);
	f->msgs = MemoryContextAlloc(cxt, sizeof(SbMessage) * Max(limit, 1));
	f->outcomes = MemoryContextAlloc(cxt, sizeof(SbOutcome) * Max(limit, 1));
	for (;;)
	{
		SPI_cursor_fetch(portal, true, chunk);
		if (SPI_processed == 0)
			break;
		chunk = Max(limit / SB_CHUNKS_PER_BURST, SB_MIN_CHUNK);
		MemoryContextSwitchTo(cxt);
		result->fetched += (int) SPI_processed;
		for (i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			ItemPointer tid;

			tid = (ItemPointer) DatumGetPointer(heap_getattr(tup, layout.col_ctid, desc, &isnull));
			if (ItemPointerCompare(tid, &result->last_tid) > 0)
				result->last_tid = *tid;
			if (skip_own)
			{
				TransactionId xmin = DatumGetTransactionId(heap_getattr(tup, layout.col_xmin,
																		desc, &isnull));

				if (TransactionIdIsCurrentTransactionId(xmin))
					continue;
			}
			if (sb_retry_not_yet(retry, sig->relid, tid, f->now))
				continue;		/* failed before: wait for its delay */
			sb_build_message(&f->msgs[f->nmsgs], sig, &layout, tup, desc);
			if (f->pub == NULL)
				f->pub = sb_amqp_publish_begin(conn, f->msgs, limit,
											   sig->mandatory,
											   signalbus_confirm_timeout,
											   f->outcomes);
			sb_amqp_publish_add(conn, f->pub, f->nmsgs);
			f->nmsgs++;
		}
		if (f->pub != NULL)
			sb_amqp_publish_push(conn, f->pub);
		MemoryContextSwitchTo(spicxt);
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	SPI_finish();				/* back in cxt */
	restore_user(&scope);
	MemoryContextSwitchTo(old);

	if (f->nmsgs == 0)
	{
		MemoryContextDelete(cxt);
		result->broker_failed = !sb_amqp_usable(conn);
		return NULL;
	}
	return f;
}

/*
 * sb_burst_finish: wait for the broker's verdicts on f's messages, delete
 * the rows it confirmed, set aside (worker) those that failed too often,
 * and count the outcome in result (as filled by sb_burst_start()).  A
 * broker failure is reported in result->broker_failed after the rows the
 * broker did confirm are deleted.  Frees f.
 */
void
sb_burst_finish(SbAmqp *conn, SbInFlight *f, SbBurst *result)
{
	const SbSignal *sig = f->sig;
	SbMessage  *msgs = f->msgs;
	SbOwnerScope scope;
	ItemPointerData *acked;
	int			nacked = 0;
	int			ndead = 0;
	int		   *dead;
	int		   *dead_attempts;
	TimestampTz *dead_first;
	MemoryContext old;
	int			i;

	old = MemoryContextSwitchTo(f->cxt);
	sb_amqp_publish_finish(conn, f->pub);

	acked = palloc(sizeof(ItemPointerData) * f->nmsgs);
	dead = palloc(sizeof(int) * f->nmsgs);
	dead_attempts = palloc(sizeof(int) * f->nmsgs);
	dead_first = palloc(sizeof(TimestampTz) * f->nmsgs);
	for (i = 0; i < f->nmsgs; i++)
	{
		switch (f->outcomes[i])
		{
			case SB_ACKED:
				acked[nacked++] = msgs[i].tid;
				sb_retry_forget(f->retry, sig->relid, &msgs[i].tid);
				break;
			case SB_NACKED:
			case SB_RETURNED:
			case SB_AMBIGUOUS:
			case SB_INVALID:
			case SB_REFUSED:
				result->failed++;
				if (result->error[0] == '\0')
					snprintf(result->error, SB_ERROR_LEN,
							 "table \"%s\", row %s: %s", sig->relname,
							 DatumGetCString(DirectFunctionCall1(tidout,
																 PointerGetDatum(&msgs[i].tid))),
							 msgs[i].error ? msgs[i].error : "failed");
				if (f->retry)
				{
					TimestampTz first;
					int			attempts = sb_retry_failed(f->retry, sig->relid,
														   &msgs[i].tid, f->now,
														   &first);

					if (attempts >= signalbus_max_attempts)
					{
						dead[ndead] = i;
						dead_attempts[ndead] = attempts;
						dead_first[ndead] = first;
						ndead++;
					}
				}
				break;
			default:
				break;
		}
	}

	if (nacked > 0 || ndead > 0)
	{
		become_owner(sig, &scope);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (ndead > 0)
		{
			move_to_dead_letters(sig, f->qualname, msgs, dead, dead_attempts,
								 dead_first, ndead);
			for (i = 0; i < ndead; i++)
			{
				acked[nacked++] = msgs[dead[i]].tid;
				sb_retry_forget(f->retry, sig->relid, &msgs[dead[i]].tid);
			}
			result->dead = ndead;
		}
		if (nacked > 0)
		{
			char	   *sql = psprintf("DELETE FROM ONLY %s AS sb "
									   "WHERE sb.ctid OPERATOR(pg_catalog.=) ANY ($1)",
									   f->qualname);
			Oid			argtypes[1] = {TIDARRAYOID};
			Datum		args[1];
			int			ret;

			args[0] = tid_array(acked, nacked);
			ret = execute_cached(sql, 1, argtypes, args);
			if (ret != SPI_OK_DELETE)
				elog(ERROR, "signalbus: could not delete from signal table %s: %s",
					 f->qualname, SPI_result_code_string(ret));
			result->sent += (int) SPI_processed - ndead;
		}
		SPI_finish();
		restore_user(&scope);
	}
	result->broker_failed = !sb_amqp_usable(conn);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(f->cxt);
}

/*
 * sb_flush_burst: send one burst of sig's pending rows and wait for the
 * broker (sb_burst_start() and sb_burst_finish() in one).
 */
void
sb_flush_burst(SbAmqp *conn, const SbSignal *sig,
			   const ItemPointerData *tids, int ntids,
			   const ItemPointerData *after, bool skip_own, SbRetry *retry,
			   SbBurst *result)
{
	SbInFlight *f = sb_burst_start(conn, sig, tids, ntids, after, skip_own,
								   retry, result);

	if (f != NULL)
		sb_burst_finish(conn, f, result);
}

/*
 * may_flush: whether the current user has SELECT and DELETE on relid.
 */
static bool
may_flush(Oid relid)
{
	Oid			user = GetUserId();

	return pg_class_aclcheck(relid, user, ACL_SELECT) == ACLCHECK_OK &&
		pg_class_aclcheck(relid, user, ACL_DELETE) == ACLCHECK_OK;
}

/*
 * signals_to_flush: the signal table named by the function's argument
 * (checking the caller's privileges), or, for NULL, every signal table the
 * caller may flush.
 */
static List *
signals_to_flush(FunctionCallInfo fcinfo)
{
	List	   *signals;
	List	   *mine = NIL;
	ListCell   *lc;

	if (!PG_ARGISNULL(0))
	{
		Oid			relid = PG_GETARG_OID(0);
		char	   *relname = get_rel_name(relid);

		if (relname == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("relation with OID %u does not exist", relid)));
		if (pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
			aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_TABLE, relname);
		if (pg_class_aclcheck(relid, GetUserId(), ACL_DELETE) != ACLCHECK_OK)
			aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_TABLE, relname);
		signals = sb_load_signals(relid);
		if (signals == NIL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("table \"%s\" is not a signal table", relname),
					 errhint("Register it with signalbus_register().")));
		return signals;
	}
	signals = sb_load_signals(InvalidOid);
	foreach(lc, signals)
	{
		SbSignal   *sig = lfirst(lc);

		if (may_flush(sig->relid))
			mine = lappend(mine, sig);
	}
	return mine;
}

/*
 * primary_key_order: the table's primary key columns, as an order_by list,
 * for flushing in order a table registered without order_by.
 */
static char *
primary_key_order(Oid relid)
{
	Relation	rel = relation_open(relid, AccessShareLock);
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);
	StringInfoData out;

	initStringInfo(&out);
	if (OidIsValid(pkoid))
	{
		Relation	idx = index_open(pkoid, AccessShareLock);
		int			i;

		for (i = 0; i < idx->rd_index->indnkeyatts; i++)
		{
			AttrNumber	attnum = idx->rd_index->indkey.values[i];

			appendStringInfo(&out, "%s%s", i > 0 ? ", " : "",
							 quote_identifier(get_attname(relid, attnum, false)));
		}
		index_close(idx, AccessShareLock);
	}
	relation_close(rel, AccessShareLock);
	return out.len > 0 ? out.data : pstrdup("ctid");
}

static int64
count_rows(const SbSignal *sig)
{
	char	   *sql = psprintf("SELECT pg_catalog.count(*) FROM ONLY %s",
							   quote_qualified_identifier(sig->nspname, sig->relname));
	int64		n = 0;
	bool		isnull;

	if (SPI_execute(sql, true, 1) == SPI_OK_SELECT && SPI_processed == 1)
		n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										SPI_tuptable->tupdesc, 1, &isnull));
	return n;
}

static void
report_progress(const char *relname, int64 sent, int64 left, TimestampTz started,
				bool done)
{
	long		ms = TimestampDifferenceMilliseconds(started, GetCurrentTimestamp());
	double		rate = ms > 0 ? (double) sent * 1000.0 / ms : 0.0;

	if (done)
		ereport(NOTICE,
				(errmsg("signalbus_flushmany: table \"%s\": %lld sent in %.1f s (%.0f/s)",
						relname, (long long) sent, ms / 1000.0, rate)));
	else
		ereport(NOTICE,
				(errmsg("signalbus_flushmany: table \"%s\": %lld sent (%.0f/s), about %lld left",
						relname, (long long) sent, rate, (long long) Max(left, 0))));
}

/*
 * broker_lost: the error of a flush whose connection failed.
 */
static void
broker_lost(SbAmqp *conn)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("connection to AMQP broker lost during flush: %s",
					sb_amqp_last_error(conn)),
			 errdetail("Rows whose messages were not confirmed were kept.")));
}

/*
 * flush_pipelined: signalbus_flush() of a table without order_by, in the
 * caller's transaction: each burst is locked, built and published while the
 * broker confirms the one before.  Returns how many rows were sent.
 */
static int64
flush_pipelined(SbAmqp *conn, const SbSignal *sig)
{
	ItemPointerData after;
	SbInFlight *pending = NULL;
	SbBurst		pending_res;
	int64		sent = 0;
	bool		more = true;

	ItemPointerSet(&after, 0, 0);
	memset(&pending_res, 0, sizeof(pending_res));
	while (more || pending != NULL)
	{
		SbInFlight *f = NULL;
		SbBurst		res;

		memset(&res, 0, sizeof(res));
		if (!sb_amqp_usable(conn))
			more = false;
		else if (more && (pending == NULL || sb_amqp_settled(conn)))
		{
			f = sb_burst_start(conn, sig, NULL, 0, &after, true, NULL, &res);
			after = res.last_tid;
			more = res.fetched >= sig->burst_count;
		}
		if (pending != NULL)
		{
			sb_burst_finish(conn, pending, &pending_res);
			sent += pending_res.sent;
			if (pending_res.broker_failed)
				broker_lost(conn);
		}
		pending = f;
		pending_res = res;
		CHECK_FOR_INTERRUPTS();
	}
	if (!sb_amqp_usable(conn))
		broker_lost(conn);
	return sent;
}

/*
 * flush_signals: the loop behind signalbus_flush(), signalbus_flushordered()
 * and signalbus_flushmany().
 */
static int64
flush_signals(List *signals, SbFlushMode mode)
{
	int64		total = 0;
	SbAmqp	   *volatile conn = NULL;
	MemoryContext callcxt = CurrentMemoryContext;
	MemoryContext burstcxt;
	ListCell   *lc;

	if (signals == NIL)
		return 0;

	burstcxt = AllocSetContextCreate(callcxt, "signalbus flush",
									 ALLOCSET_DEFAULT_SIZES);
	conn = sb_amqp_connect(signalbus_amqp_url,
						   psprintf("signalbus flush (pid %d)", MyProcPid));
	PG_TRY();
	{
		foreach(lc, signals)
		{
			SbSignal   *sig = lfirst(lc);
			ItemPointerData after;
			SbBurst		res;
			int64		sent = 0;
			int64		left = 0;
			TimestampTz started = GetCurrentTimestamp();
			TimestampTz last_report = started;

			if (mode == SB_FLUSH_ORDERED && sig->order_by == NULL)
				sig->order_by = primary_key_order(sig->relid);
			if (mode == SB_FLUSH_MANY)
				left = count_rows(sig);

			ItemPointerSet(&after, 0, 0);
			if (mode == SB_FLUSH && sig->order_by == NULL)
			{
				sent = flush_pipelined(conn, sig);
				total += sent;
				continue;
			}
			for (;;)
			{
				MemoryContext old = MemoryContextSwitchTo(burstcxt);

				/*
				 * flushmany's own commits only delete rows the broker has
				 * confirmed: one lost in a crash means a message sent again,
				 * which at-least-once delivery allows, so they need not wait
				 * for the WAL flush (the worker's commits do not either).
				 */
				if (mode == SB_FLUSH_MANY)
					(void) set_config_option("synchronous_commit", "off",
											 PGC_USERSET, PGC_S_SESSION,
											 GUC_ACTION_LOCAL, true, 0, false);
				sb_flush_burst(conn, sig, NULL, 0, &after, mode != SB_FLUSH_MANY,
							   NULL, &res);
				MemoryContextSwitchTo(old);
				MemoryContextReset(burstcxt);
				sent += res.sent;
				left -= res.sent;
				if (res.broker_failed)
					broker_lost(conn);
				if (mode == SB_FLUSH_MANY)
				{
					SPI_commit();
					if (TimestampDifferenceExceeds(last_report, GetCurrentTimestamp(),
												   SB_PROGRESS_INTERVAL_MS))
					{
						/* other sessions may be draining it too: recount */
						left = count_rows(sig);
						report_progress(sig->relname, sent, left, started, false);
						last_report = GetCurrentTimestamp();
					}
				}
				after = res.last_tid;
				if (res.fetched < sig->burst_count)
					break;
				if (sig->order_by != NULL && res.sent == 0)
					break;
				CHECK_FOR_INTERRUPTS();
			}
			if (mode == SB_FLUSH_MANY)
				report_progress(sig->relname, sent, 0, started, true);
			total += sent;
		}
	}
	PG_FINALLY();
	{
		sb_amqp_close(conn);
	}
	PG_END_TRY();

	MemoryContextDelete(burstcxt);
	return total;
}

/*
 * signalbus_flush: send the pending signals of one table (NULL: of every
 * table the caller may flush) from this backend, with a connection of its
 * own.  Returns how many were confirmed and deleted.
 */
PG_FUNCTION_INFO_V1(signalbus_flush);
Datum
signalbus_flush(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(flush_signals(signals_to_flush(fcinfo), SB_FLUSH));
}

/*
 * signalbus_flushordered: the same, in order_by order (the primary key's
 * for a table registered without one), waiting for locked rows.
 */
PG_FUNCTION_INFO_V1(signalbus_flushordered);
Datum
signalbus_flushordered(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(flush_signals(signals_to_flush(fcinfo), SB_FLUSH_ORDERED));
}

/*
 * signalbus_flushmany: a procedure for huge backlogs, committing after every
 * burst so that memory and locks stay bounded.
 */
PG_FUNCTION_INFO_V1(signalbus_flushmany);
Datum
signalbus_flushmany(PG_FUNCTION_ARGS)
{
	List	   *signals;

	if (fcinfo->context == NULL || !IsA(fcinfo->context, CallContext) ||
		castNode(CallContext, fcinfo->context)->atomic)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_TERMINATION),
				 errmsg("signalbus_flushmany() cannot run inside a transaction block"),
				 errhint("Run CALL signalbus_flushmany() on its own: it commits after every burst.")));

	if (SPI_connect_ext(SPI_OPT_NONATOMIC) != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	signals = signals_to_flush(fcinfo);
	(void) flush_signals(signals, SB_FLUSH_MANY);
	SPI_finish();
	PG_RETURN_VOID();
}
