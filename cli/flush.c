/*-------------------------------------------------------------------------
 *
 * flush.c
 *		The flush, flushordered and flushmany commands.
 *
 * Each run picks its tables (the SIGNAL arguments, or every signal table
 * the user may flush, minus --exclude) and calls the extension once per
 * table, so that a failure names its table and --exclude works:
 *
 *	flush			SELECT signalbus_flush(t)
 *	flushordered	SELECT signalbus_flushordered(t)
 *	flushmany		CALL signalbus_flushmany(t)
 *
 * Names are resolved by the server ($1::regclass, through search_path), at
 * every run, so that under --repeat a table registered meanwhile is picked
 * up.  The first error ends the program with status 1: under --repeat too,
 * as "flask signalbus flush --repeat" does; a supervisor restarts it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include "common/logging.h"
#include "pqexpbuffer.h"

#include "signalbus_cli.h"

/* a table to flush: its OID and its name as regclass prints it */
typedef struct Target
{
	char	   *oid;
	char	   *name;
} Target;

typedef struct TargetList
{
	Target	   *items;
	int			count;
	int			alloc;
} TargetList;

static void
add_target(TargetList *list, const char *oid, const char *name)
{
	int			i;

	for (i = 0; i < list->count; i++)
		if (strcmp(list->items[i].oid, oid) == 0)
			return;				/* named twice */
	if (list->count == list->alloc)
	{
		list->alloc = list->alloc ? list->alloc * 2 : 16;
		list->items = pg_realloc(list->items, list->alloc * sizeof(Target));
	}
	list->items[list->count].oid = pg_strdup(oid);
	list->items[list->count].name = pg_strdup(name);
	list->count++;
}

static void
remove_target(TargetList *list, const char *oid)
{
	int			i;

	for (i = 0; i < list->count; i++)
	{
		if (strcmp(list->items[i].oid, oid) == 0)
		{
			free(list->items[i].oid);
			free(list->items[i].name);
			memmove(&list->items[i], &list->items[i + 1],
					(list->count - i - 1) * sizeof(Target));
			list->count--;
			return;
		}
	}
}

static void
free_targets(TargetList *list)
{
	int			i;

	for (i = 0; i < list->count; i++)
	{
		free(list->items[i].oid);
		free(list->items[i].name);
	}
	free(list->items);
	memset(list, 0, sizeof(*list));
}

/*
 * choose_tables: the tables this run flushes, in list; false (the error
 * reported) when a SIGNAL does not resolve.  An --exclude that names no
 * signal table is only warned about, once (warn), as the seed does.
 */
static bool
choose_tables(PGconn *conn, const char *schema, const SbOptions *opts,
			  bool warn, TargetList *list)
{
	SimpleStringListCell *cell;
	PQExpBufferData sql;
	PGresult   *res;
	int			i;

	initPQExpBuffer(&sql);
	if (opts->signals.head != NULL)
	{
		for (cell = opts->signals.head; cell; cell = cell->next)
		{
			const char *params[1] = {cell->val};

			res = sb_exec(conn,
						  "SELECT $1::pg_catalog.regclass::pg_catalog.oid,"
						  "       $1::pg_catalog.regclass::pg_catalog.text",
						  1, params);
			if (res == NULL)
			{
				termPQExpBuffer(&sql);
				return false;
			}
			add_target(list, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1));
			PQclear(res);
		}
	}
	else
	{
		/* as signalbus_flush(NULL): the tables the user may flush */
		appendPQExpBuffer(&sql,
						  "SELECT s.signal::pg_catalog.oid, s.signal::pg_catalog.text"
						  "  FROM %s.signalbus_signals s"
						  " WHERE pg_catalog.has_table_privilege(s.signal, 'SELECT')"
						  "   AND pg_catalog.has_table_privilege(s.signal, 'DELETE')"
						  " ORDER BY s.signal::pg_catalog.text COLLATE \"C\"",
						  schema);
		res = sb_exec(conn, sql.data, 0, NULL);
		if (res == NULL)
		{
			termPQExpBuffer(&sql);
			return false;
		}
		for (i = 0; i < PQntuples(res); i++)
			add_target(list, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
		PQclear(res);
	}

	resetPQExpBuffer(&sql);
	appendPQExpBuffer(&sql,
					  "SELECT r::pg_catalog.oid,"
					  "       EXISTS (SELECT FROM %s.signalbus_signals s WHERE s.signal = r)"
					  "  FROM pg_catalog.to_regclass($1) r",
					  schema);
	for (cell = opts->exclude.head; cell; cell = cell->next)
	{
		const char *params[1] = {cell->val};

		res = sb_exec(conn, sql.data, 1, params);
		if (res == NULL)
		{
			termPQExpBuffer(&sql);
			return false;
		}
		if (PQgetisnull(res, 0, 0))
		{
			if (warn)
				pg_log_warning("excluded table \"%s\" does not exist", cell->val);
		}
		else
		{
			if (warn && strcmp(PQgetvalue(res, 0, 1), "t") != 0)
				pg_log_warning("excluded table \"%s\" is not a signal table", cell->val);
			remove_target(list, PQgetvalue(res, 0, 0));
		}
		PQclear(res);
	}
	termPQExpBuffer(&sql);
	return true;
}

/*
 * flush_table: flush one table; returns how many messages were sent, or -1
 * (the error reported).
 */
static long long
flush_table(PGconn *conn, const char *schema, const SbOptions *opts,
			const Target *t)
{
	PQExpBufferData sql;
	const char *params[1] = {t->oid};
	PGresult   *res;
	long long	sent = 0;

	initPQExpBuffer(&sql);
	if (opts->command == SB_CMD_FLUSHMANY)
	{
		appendPQExpBuffer(&sql,
						  "CALL %s.signalbus_flushmany($1::pg_catalog.oid::pg_catalog.regclass)",
						  schema);
		sb_progress_begin(t->name);
		res = sb_exec(conn, sql.data, 1, params);
		/* under --repeat, an idle table says nothing */
		if (!sb_progress_end(&sent, res != NULL, opts->repeat >= 0) &&
			res != NULL)
		{
			pg_log_error("CALL signalbus_flushmany() reported no count for table %s",
						 t->name);
			PQclear(res);
			res = NULL;
		}
	}
	else
	{
		appendPQExpBuffer(&sql,
						  "SELECT %s.%s($1::pg_catalog.oid::pg_catalog.regclass)",
						  schema,
						  opts->command == SB_CMD_FLUSHORDERED ?
						  "signalbus_flushordered" : "signalbus_flush");
		res = sb_exec(conn, sql.data, 1, params);
		if (res != NULL)
		{
			sent = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
			if (sb_verbose)
				fprintf(stderr, "%s: %lld sent\n", t->name, sent);
		}
	}
	termPQExpBuffer(&sql);
	if (res == NULL)
		return -1;
	PQclear(res);
	return sent;
}

/*
 * sb_run_flush: the flush, flushordered and flushmany commands.  Returns
 * the exit status.
 */
int
sb_run_flush(PGconn *conn, const char *schema, const SbOptions *opts)
{
	bool		repeat = opts->repeat >= 0;
	bool		first = true;

	/* under --repeat, a first SIGINT/SIGTERM stops between flushes */
	sb_cancel_threshold = repeat ? 2 : 1;

	for (;;)
	{
		double		started = sb_now();
		TargetList	targets = {0};
		long long	total = 0;
		int			i;

		if (opts->wait > 0 && !sb_sleep(opts->wait))
		{
			if (repeat)
				break;
			pg_log_error("interrupted before flushing");
			return 1;
		}
		if (!choose_tables(conn, schema, opts, first, &targets))
			return 1;
		first = false;

		for (i = 0; i < targets.count; i++)
		{
			long long	sent;

			if (repeat && sb_stop_requests > 0)
				break;
			sent = flush_table(conn, schema, opts, &targets.items[i]);
			if (sent < 0)
			{
				free_targets(&targets);
				return 1;
			}
			total += sent;
		}
		free_targets(&targets);

		if (!repeat || total > 0)
		{
			printf("%lld %s sent\n", total, total == 1 ? "message" : "messages");
			fflush(stdout);
		}
		if (!repeat || sb_stop_requests > 0)
			break;
		if (!sb_sleep(started + opts->repeat - sb_now()))
			break;
	}
	return 0;
}
