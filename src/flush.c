/*-------------------------------------------------------------------------
 *
 * flush.c
 *		The flush engine, shared by the worker and the SQL functions:
 *		lock a burst of rows, turn them into messages, publish them, wait
 *		for the broker's confirms, delete exactly the confirmed rows.
 *
 * A burst runs in the caller's transaction: the worker gives each burst a
 * transaction of its own, signalbus_flush() runs them all in the calling
 * transaction (so a ROLLBACK brings the sent rows back: duplicates, never a
 * loss).  Rows are locked FOR UPDATE SKIP LOCKED, so concurrent senders
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

#include "access/relation.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

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
 * sb_flush_burst: send one burst of sig's pending rows.
 *
 * tids: send just these rows (the commit queue's fast path), or, when NULL,
 * the next burst_count rows after *after in ctid order (a sweep).  skip_own:
 * leave rows inserted by the current transaction alone (for flushes run in
 * a user's transaction).  Raises an error for anything but the broker; a
 * broker failure is reported in result->broker_failed after the rows the
 * broker did confirm are deleted.
 */
void
sb_flush_burst(SbAmqp *conn, const SbSignal *sig,
			   const ItemPointerData *tids, int ntids,
			   const ItemPointerData *after, bool skip_own, SbBurst *result)
{
	Relation	rel;
	StringInfoData sql;
	StringInfoData select_list;
	SbLayout	layout;
	char	   *qualname;
	Oid			argtypes[2];
	Datum		args[2];
	Oid			save_userid;
	int			save_sec;
	int			save_nestlevel;
	SbMessage  *msgs;
	SbOutcome  *outcomes;
	ItemPointerData *acked;
	int			nmsgs = 0;
	int			nacked = 0;
	uint64		i;
	int			ret;
	bool		ordered = (sig->order_by != NULL);

	memset(result, 0, sizeof(SbBurst));
	if (after)
		result->last_tid = *after;

	/* the table may have been dropped since the registrations were read */
	rel = try_relation_open(sig->relid, RowExclusiveLock);
	if (rel == NULL)
		return;
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
		appendStringInfo(&sql, " ORDER BY %s", sig->order_by);
	appendStringInfo(&sql, " LIMIT $2 FOR UPDATE OF sb%s",
					 ordered ? "" : " SKIP LOCKED");
	argtypes[1] = INT4OID;
	args[1] = Int32GetDatum(tids ? ntids : sig->burst_count);

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(sig->owner, save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true,
							 0, false);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	ret = SPI_execute_with_args(sql.data, 2, argtypes, args, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "signalbus: could not read signal table %s: %s",
			 qualname, SPI_result_code_string(ret));

	result->fetched = (int) SPI_processed;
	msgs = palloc(sizeof(SbMessage) * Max(SPI_processed, 1));
	outcomes = palloc(sizeof(SbOutcome) * Max(SPI_processed, 1));
	acked = palloc(sizeof(ItemPointerData) * Max(SPI_processed, 1));

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
		sb_build_message(&msgs[nmsgs++], sig, &layout, tup, desc);
	}

	if (nmsgs > 0)
	{
		sb_amqp_publish_burst(conn, msgs, nmsgs, sig->mandatory,
							  signalbus_confirm_timeout, outcomes);
		for (i = 0; i < nmsgs; i++)
		{
			switch (outcomes[i])
			{
				case SB_ACKED:
					acked[nacked++] = msgs[i].tid;
					break;
				case SB_NACKED:
				case SB_RETURNED:
				case SB_INVALID:
					result->failed++;
					break;
				default:
					break;
			}
		}
	}

	if (nacked > 0)
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql,
						 "DELETE FROM ONLY %s AS sb WHERE sb.ctid OPERATOR(pg_catalog.=) ANY ($1)",
						 qualname);
		argtypes[0] = TIDARRAYOID;
		args[0] = tid_array(acked, nacked);
		ret = SPI_execute_with_args(sql.data, 1, argtypes, args, NULL, false, 0);
		if (ret != SPI_OK_DELETE)
			elog(ERROR, "signalbus: could not delete from signal table %s: %s",
				 qualname, SPI_result_code_string(ret));
		result->sent = (int) SPI_processed;
	}
	result->broker_failed = !sb_amqp_usable(conn);

	SPI_finish();
	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec);
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
 * signalbus_flush: send the pending signals of one table (NULL: of every
 * table the caller may flush) from this backend, with a connection of its
 * own.  Returns how many were confirmed and deleted.
 */
PG_FUNCTION_INFO_V1(signalbus_flush);
Datum
signalbus_flush(PG_FUNCTION_ARGS)
{
	List	   *signals;
	List	   *mine = NIL;
	ListCell   *lc;
	int64		total = 0;
	SbAmqp	   *volatile conn = NULL;
	MemoryContext burstcxt;
	char	   *name;

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
		mine = signals;
	}
	else
	{
		signals = sb_load_signals(InvalidOid);
		foreach(lc, signals)
		{
			SbSignal   *sig = lfirst(lc);

			if (may_flush(sig->relid))
				mine = lappend(mine, sig);
		}
	}
	if (mine == NIL)
		PG_RETURN_INT64(0);

	name = psprintf("signalbus flush (pid %d)", MyProcPid);
	burstcxt = AllocSetContextCreate(CurrentMemoryContext, "signalbus flush",
									 ALLOCSET_DEFAULT_SIZES);
	conn = sb_amqp_connect(signalbus_amqp_url, name);
	PG_TRY();
	{
		foreach(lc, mine)
		{
			SbSignal   *sig = lfirst(lc);
			ItemPointerData after;
			SbBurst		res;

			ItemPointerSet(&after, 0, 0);
			for (;;)
			{
				MemoryContext old = MemoryContextSwitchTo(burstcxt);

				sb_flush_burst(conn, sig, NULL, 0, &after, true, &res);
				MemoryContextSwitchTo(old);
				MemoryContextReset(burstcxt);
				total += res.sent;
				if (res.broker_failed)
					ereport(ERROR,
							(errcode(ERRCODE_CONNECTION_FAILURE),
							 errmsg("connection to AMQP broker lost during flush: %s",
									sb_amqp_last_error(conn)),
							 errdetail("Rows whose messages were not confirmed were kept.")));
				after = res.last_tid;
				if (res.fetched < sig->burst_count)
					break;
				if (sig->order_by != NULL && res.sent == 0)
					break;
				CHECK_FOR_INTERRUPTS();
			}
		}
	}
	PG_FINALLY();
	{
		sb_amqp_close(conn);
	}
	PG_END_TRY();

	MemoryContextDelete(burstcxt);
	PG_RETURN_INT64(total);
}
