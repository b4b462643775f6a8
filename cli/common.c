/*-------------------------------------------------------------------------
 *
 * common.c
 *		Connecting, running a statement, reporting errors and sleeping, for
 *		the signalbus command-line client.
 *
 * Connections are made as psql makes them: -d may be a database name, a
 * connection string or a URI; PG* environment variables, the service file
 * and ~/.pgpass are libpq's business; a password is prompted for when the
 * server asks for one (unless -w) or up front (-W).
 *
 * SIGINT and SIGTERM only count "stop requests" (and wake the poll() loops
 * below through a self-pipe).  A statement is cancelled once the count
 * reaches sb_cancel_threshold: 1 for a one-shot command (Ctrl-C cancels it,
 * as in psql), 2 under --repeat (the first request lets the running flush
 * finish and stops the loop between flushes; a second one cancels).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "common/logging.h"
#include "common/string.h"

#include "signalbus_cli.h"

const char *progname;
bool		sb_verbose = false;
volatile sig_atomic_t sb_stop_requests = 0;
int			sb_cancel_threshold = 1;

/* self-pipe: the signal handler writes a byte, the poll() loops wake up */
static int	wakeup_pipe[2] = {-1, -1};

/* called about once a second while a statement runs (progress display) */
static void (*tick_callback) (void) = NULL;

/*
 * handle_stop_signal: SIGINT and SIGTERM handler.
 */
static void
handle_stop_signal(int signo)
{
	int			save_errno = errno;

	if (sb_stop_requests < 1000)
		sb_stop_requests++;
	if (wakeup_pipe[1] >= 0 && write(wakeup_pipe[1], "x", 1) < 0)
	{
		/* the pipe is full: the poll() loop has a wakeup waiting anyway */
	}
	errno = save_errno;
}

/*
 * sb_setup_signals: install the SIGINT and SIGTERM handlers, without
 * SA_RESTART so that a blocking poll() returns at once.
 */
void
sb_setup_signals(void)
{
	struct sigaction sa;
	int			i;

	if (pipe(wakeup_pipe) != 0)
		pg_fatal("could not create pipe: %m");
	for (i = 0; i < 2; i++)
	{
		if (fcntl(wakeup_pipe[i], F_SETFL, O_NONBLOCK) != 0 ||
			fcntl(wakeup_pipe[i], F_SETFD, FD_CLOEXEC) != 0)
			pg_fatal("could not set up pipe: %m");
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handle_stop_signal;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGINT);
	sigaddset(&sa.sa_mask, SIGTERM);
	sa.sa_flags = 0;
	if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0)
		pg_fatal("could not install signal handlers: %m");
}

/* drain the self-pipe */
static void
drain_wakeup_pipe(void)
{
	char		buf[64];

	while (read(wakeup_pipe[0], buf, sizeof(buf)) > 0)
		;
}

/*
 * sb_now: seconds on a monotonic clock.
 */
double
sb_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * sb_set_tick: have the statement loop call tick about once a second.
 */
void
sb_set_tick(void (*tick) (void))
{
	tick_callback = tick;
}

/*
 * sb_sleep: sleep, returning false as soon as a stop was requested.
 */
bool
sb_sleep(double seconds)
{
	double		deadline = sb_now() + seconds;

	for (;;)
	{
		struct pollfd pfd;
		double		left;
		int			timeout_ms;

		if (sb_stop_requests > 0)
			return false;
		left = deadline - sb_now();
		if (left <= 0)
			return true;
		timeout_ms = left > 3600.0 ? 3600 * 1000 : (int) (left * 1000.0) + 1;
		pfd.fd = wakeup_pipe[0];
		pfd.events = POLLIN;
		pfd.revents = 0;
		if (poll(&pfd, 1, timeout_ms) > 0)
			drain_wakeup_pipe();
	}
}

/*
 * sb_connect: connect as psql does.  Returns NULL, having said why, on
 * failure.
 */
PGconn *
sb_connect(const ConnParams *cparams)
{
	PGconn	   *conn;
	char	   *password = NULL;
	bool		new_pass;

	if (cparams->prompt_password == TRI_YES)
		password = simple_prompt("Password: ", false);

	do
	{
		const char *keywords[7];
		const char *values[7];

		keywords[0] = "host";
		values[0] = cparams->pghost;
		keywords[1] = "port";
		values[1] = cparams->pgport;
		keywords[2] = "user";
		values[2] = cparams->pguser;
		keywords[3] = "password";
		values[3] = password;
		keywords[4] = "dbname";
		values[4] = cparams->dbname;
		keywords[5] = "fallback_application_name";
		values[5] = progname;
		keywords[6] = NULL;
		values[6] = NULL;

		new_pass = false;
		conn = PQconnectdbParams(keywords, values, true);
		if (conn == NULL)
		{
			pg_log_error("could not connect to the server: out of memory");
			return NULL;
		}
		if (PQstatus(conn) == CONNECTION_BAD &&
			PQconnectionNeedsPassword(conn) &&
			password == NULL &&
			cparams->prompt_password != TRI_NO)
		{
			PQfinish(conn);
			password = simple_prompt("Password: ", false);
			new_pass = true;
		}
	} while (new_pass);

	if (password)
		free(password);

	if (PQstatus(conn) == CONNECTION_BAD)
	{
		pg_log_error("%s", PQerrorMessage(conn));
		PQfinish(conn);
		return NULL;
	}
	PQsetErrorVerbosity(conn, sb_verbose ? PQERRORS_VERBOSE : PQERRORS_DEFAULT);
	return conn;
}

/*
 * sb_extension_schema: the quoted name of the schema the signalbus
 * extension lives in, or NULL (having said so) when it is not installed in
 * this database.
 */
const char *
sb_extension_schema(PGconn *conn)
{
	PGresult   *res;
	char	   *schema;

	res = sb_exec(conn,
				  "SELECT pg_catalog.quote_ident(n.nspname)"
				  "  FROM pg_catalog.pg_extension e"
				  "  JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace"
				  " WHERE e.extname = 'signalbus'",
				  0, NULL);
	if (res == NULL)
		return NULL;
	if (PQntuples(res) != 1)
	{
		pg_log_error("extension \"signalbus\" is not installed in database \"%s\"",
					 PQdb(conn));
		pg_log_error_hint("Connect to the database that holds the signal tables (option -d), or run CREATE EXTENSION signalbus there.");
		PQclear(res);
		return NULL;
	}
	schema = pg_strdup(PQgetvalue(res, 0, 0));
	PQclear(res);
	return schema;
}

/*
 * send_cancel: ask the server to cancel the running statement.
 */
static void
send_cancel(PGconn *conn)
{
	PGcancel   *cancel = PQgetCancel(conn);
	char		errbuf[256];

	if (cancel == NULL)
		return;
	if (!PQcancel(cancel, errbuf, sizeof(errbuf)))
		pg_log_warning("could not send cancel request: %s", errbuf);
	PQfreeCancel(cancel);
}

/*
 * sb_exec: run one statement (with text parameters) and return its result,
 * or report the error and return NULL.  While waiting, it calls the tick
 * callback about once a second and cancels the statement once
 * sb_cancel_threshold stop requests have arrived.
 */
PGresult *
sb_exec(PGconn *conn, const char *sql, int nparams, const char *const *params)
{
	PGresult   *result = NULL;
	bool		cancel_sent = false;
	double		next_tick = sb_now() + 1.0;

	/* stopped between two statements: do not start another one */
	if (sb_stop_requests >= sb_cancel_threshold)
	{
		pg_log_error("interrupted");
		return NULL;
	}
	if (!PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL, 0))
	{
		sb_report_error(NULL, conn);
		return NULL;
	}

	for (;;)
	{
		struct pollfd pfd[2];
		double		now;
		int			timeout_ms;

		/* collect every result that is complete */
		while (!PQisBusy(conn))
		{
			PGresult   *res = PQgetResult(conn);

			if (res == NULL)
				goto done;
			/* keep the first error, or else the last result */
			if (result != NULL &&
				PQresultStatus(result) == PGRES_FATAL_ERROR)
				PQclear(res);
			else
			{
				PQclear(result);
				result = res;
			}
		}

		if (!cancel_sent && sb_stop_requests >= sb_cancel_threshold)
		{
			send_cancel(conn);
			cancel_sent = true;
		}

		now = sb_now();
		if (now >= next_tick)
		{
			if (tick_callback)
				tick_callback();
			next_tick = now + 1.0;
		}
		timeout_ms = (int) ((next_tick - now) * 1000.0) + 1;

		pfd[0].fd = PQsocket(conn);
		pfd[0].events = POLLIN;
		pfd[0].revents = 0;
		pfd[1].fd = wakeup_pipe[0];
		pfd[1].events = POLLIN;
		pfd[1].revents = 0;
		if (poll(pfd, 2, timeout_ms) < 0 && errno != EINTR)
		{
			pg_log_error("poll() failed: %m");
			PQclear(result);
			return NULL;
		}
		if (pfd[1].revents)
			drain_wakeup_pipe();
		if (pfd[0].revents && !PQconsumeInput(conn))
		{
			/* the connection is gone; PQgetResult says so next */
			while (!PQisBusy(conn))
			{
				PGresult   *res = PQgetResult(conn);

				if (res == NULL)
					break;
				PQclear(res);
			}
			PQclear(result);
			sb_report_error(NULL, conn);
			return NULL;
		}
	}

done:
	if (result == NULL)
	{
		sb_report_error(NULL, conn);
		return NULL;
	}
	if (PQresultStatus(result) != PGRES_TUPLES_OK &&
		PQresultStatus(result) != PGRES_COMMAND_OK)
	{
		sb_report_error(result, conn);
		PQclear(result);
		return NULL;
	}
	return result;
}

/*
 * sb_report_error: print the server's error (or libpq's, when res is NULL
 * or carries no message of the server) as "signalbus: error: ...", with its
 * detail and hint; with -v, the SQLSTATE first.
 */
void
sb_report_error(const PGresult *res, PGconn *conn)
{
	const char *primary = NULL;
	const char *sqlstate = NULL;

	sb_progress_clear();
	if (res != NULL)
	{
		primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
		sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	}
	if (primary == NULL)
	{
		const char *msg = res ? PQresultErrorMessage(res) : "";

		if (msg[0] == '\0')
			msg = PQerrorMessage(conn);
		if (msg[0] == '\0')
			msg = "unknown error";
		pg_log_error("%s", msg);
		return;
	}

	if (sb_verbose && sqlstate != NULL)
		pg_log_error("%s: %s", sqlstate, primary);
	else
		pg_log_error("%s", primary);
	if (PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL))
		pg_log_error_detail("%s", PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
	if (PQresultErrorField(res, PG_DIAG_MESSAGE_HINT))
		pg_log_error_hint("%s", PQresultErrorField(res, PG_DIAG_MESSAGE_HINT));
}
