/*-------------------------------------------------------------------------
 *
 * show.c
 *		The signals, pending and status commands: the extension's views,
 *		printed for a terminal.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include "common/logging.h"
#include "fe_utils/print.h"
#include "pqexpbuffer.h"

#include "signalbus_cli.h"

/*
 * query_view: run a query built from format and the extension's schema.
 */
static PGresult *
query_view(PGconn *conn, const char *format, const char *schema)
{
	PQExpBufferData sql;
	PGresult   *res;

	initPQExpBuffer(&sql);
	appendPQExpBuffer(&sql, format, schema);
	res = sb_exec(conn, sql.data, 0, NULL);
	termPQExpBuffer(&sql);
	return res;
}

/*
 * sb_run_signals: the signal tables, one a line, as regclass prints them
 * (schema-qualified when not visible through search_path).
 */
int
sb_run_signals(PGconn *conn, const char *schema)
{
	PGresult   *res;
	int			i;

	res = query_view(conn,
					 "SELECT s.signal::pg_catalog.text FROM %s.signalbus_signals s"
					 " ORDER BY s.signal::pg_catalog.text COLLATE \"C\"",
					 schema);
	if (res == NULL)
		return 1;
	for (i = 0; i < PQntuples(res); i++)
		printf("%s\n", PQgetvalue(res, i, 0));
	PQclear(res);
	return 0;
}

/*
 * sb_run_pending: Flask-SignalBus's layout: every table holding pending
 * signals with its count, fewest first, counts right-aligned; a rule; the
 * total.  A table the user may not read has no count: a warning says so.
 */
int
sb_run_pending(PGconn *conn, const char *schema)
{
	PGresult   *res;
	long long	total = 0;
	int			width = 1;
	int			i;

	res = query_view(conn,
					 "SELECT p.signal::pg_catalog.text, p.pending"
					 "  FROM %s.signalbus_pending p"
					 " ORDER BY p.pending, p.signal::pg_catalog.text COLLATE \"C\"",
					 schema);
	if (res == NULL)
		return 1;

	for (i = 0; i < PQntuples(res); i++)
	{
		if (PQgetisnull(res, i, 1))
			pg_log_warning("permission denied for table %s: its pending signals are not counted",
						   PQgetvalue(res, i, 0));
		else if (PQgetlength(res, i, 1) > width)
			width = PQgetlength(res, i, 1);
	}
	for (i = 0; i < PQntuples(res); i++)
	{
		long long	n;

		if (PQgetisnull(res, i, 1))
			continue;
		n = strtoll(PQgetvalue(res, i, 1), NULL, 10);
		total += n;
		if (n > 0)
			printf("%*lld %s\n", width, n, PQgetvalue(res, i, 0));
	}
	printf("-------------------------\n");
	printf("Total pending: %lld\n", total);
	PQclear(res);
	return 0;
}

/*
 * sb_run_status: the workers (signalbus_status), in psql's aligned format.
 */
int
sb_run_status(PGconn *conn, const char *schema, bool expanded)
{
	PGresult   *res;
	printQueryOpt popt;

	res = query_view(conn,
					 "SELECT * FROM %s.signalbus_status ORDER BY database, pid",
					 schema);
	if (res == NULL)
		return 1;

	memset(&popt, 0, sizeof(popt));
	popt.topt.format = PRINT_ALIGNED;
	popt.topt.expanded = expanded ? 1 : 0;
	popt.topt.border = 1;
	popt.topt.pager = 0;
	popt.topt.start_table = true;
	popt.topt.stop_table = true;
	popt.topt.default_footer = true;
	popt.topt.line_style = &pg_asciiformat;
	popt.topt.fieldSep.separator = "|";
	popt.topt.recordSep.separator = "\n";
	popt.topt.encoding = PQclientEncoding(conn);
	popt.nullPrint = "";
	printQuery(res, &popt, stdout, false, NULL);
	PQclear(res);
	return 0;
}
